"""x402gate.django under ASGI: Django's ASGI handler served by uvicorn, the official httpx client.

The middleware is async-capable, so under ASGI the whole chain stays on the server's event loop:
an async view runs on the server thread, and sync views still work (Django runs them in a thread).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate.django import require_payment
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

from .conftest import django_server

pytestmark = pytest.mark.chain

PRICE = 10_000
CHUNKS = [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]


class AsyncShop:
    def __init__(self, token: Any, pay_to: str) -> None:
        self.token, self.pay_to = token, pay_to
        self.calls: Counter[str] = Counter()
        self.threads: dict[str, str] = {}
        self.balance_at_content: dict[str, int] = {}

    async def _chunks(self, name: str) -> AsyncIterator[bytes]:
        self.balance_at_content[name] = self.token.balance_of(self.pay_to)
        for chunk in CHUNKS:
            yield chunk

    def urls(self) -> list[Any]:
        def paid(request: HttpRequest) -> HttpResponse:  # a sync view, under ASGI
            self.calls["paid"] += 1
            return JsonResponse({"content": "PAID-CONTENT", "payer": request.payment.payer})

        @require_payment("$0.02")
        async def fast(request: HttpRequest) -> HttpResponse:
            self.calls["fast"] += 1
            self.threads["fast"] = threading.current_thread().name
            return JsonResponse({"content": "FAST", "payer": request.payment.payer})

        @require_payment("$0.01")
        async def boom(request: HttpRequest) -> HttpResponse:
            self.calls["boom"] += 1
            raise RuntimeError("boom")

        @require_payment("$0.01", settlement="before")
        async def stream(request: HttpRequest) -> HttpResponse:
            self.calls["stream"] += 1
            return StreamingHttpResponse(self._chunks("stream"), content_type="text/plain")

        async def stream_after(request: HttpRequest) -> HttpResponse:
            self.calls["stream-after"] += 1
            return StreamingHttpResponse(self._chunks("stream-after"), content_type="text/plain")

        return [
            path("paid", paid),
            path("fast", fast),
            path("boom", boom),
            path("stream", stream),
            path("stream-after", stream_after),
        ]


@pytest.fixture
def shop(test_token: Any, pay_to: str) -> AsyncShop:
    return AsyncShop(test_token, pay_to)


@pytest.fixture
def site(shop: AsyncShop, gate: PaymentGate) -> Iterator[str]:
    routes = {"GET /paid": "$0.01", "GET /stream-after": "$0.01"}
    with django_server(shop.urls(), {"GATE": gate, "ROUTES": routes}, asgi=True) as url:
        yield url


@pytest.mark.parametrize(("url_path", "price"), [("/paid", 10_000), ("/fast", 20_000)])
async def test_sync_and_async_views_are_paid_under_asgi(
    url_path: str,
    price: int,
    site: str,
    shop: AsyncShop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    async with httpx.AsyncClient(base_url=site, timeout=30) as raw:
        challenge = await raw.get(url_path)
    assert challenge.status_code == 402
    required = decode_payment_required(challenge.headers["payment-required"])
    assert required.accepts[0].amount == str(price)
    async with paying_httpx_client(payer, asset=test_token, base_url=site, timeout=30) as client:
        response = await client.get(url_path)
    assert response.status_code == 200, response.text
    assert response.json()["payer"] == payer.address
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    assert test_token.balance_of(pay_to) == price
    assert shop.calls == {url_path.strip("/"): 1}


async def test_an_async_view_runs_on_the_server_loop(
    site: str, shop: AsyncShop, test_token: Any, payer: Any
) -> None:
    async with paying_httpx_client(payer, asset=test_token, base_url=site, timeout=30) as client:
        response = await client.get("/fast")
    assert response.status_code == 200
    # No sync hop anywhere in the middleware chain: the view ran on uvicorn's own thread.
    assert shop.threads["fast"] == "x402gate-demo-server"


async def test_an_async_view_that_raises_is_not_charged(
    site: str,
    shop: AsyncShop,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
    chain: Any,
) -> None:
    async with httpx.AsyncClient(base_url=site, timeout=30) as raw:
        challenge = await raw.get("/boom")
        terms = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        header = {"PAYMENT-SIGNATURE": encode_payment(sign_exact_payment(payer, terms))}
        failed = await raw.get("/boom", headers=header)
        retried = await raw.get("/boom", headers=header)  # released: the same payment may retry
    assert failed.status_code == retried.status_code == 500
    assert "payment-response" not in failed.headers
    assert shop.calls == {"boom": 2}
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.parametrize("name", ["stream", "stream-after"])
async def test_an_async_stream_produces_content_only_once_paid(
    name: str, site: str, shop: AsyncShop, test_token: Any, payer: Any, pay_to: str
) -> None:
    async with paying_httpx_client(payer, asset=test_token, base_url=site, timeout=30) as client:
        response = await client.get(f"/{name}")
    assert response.status_code == 200, response.text
    assert response.content == b"".join(CHUNKS)
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert shop.balance_at_content == {name: PRICE}
    assert test_token.balance_of(pay_to) == PRICE
