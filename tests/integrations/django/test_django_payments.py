"""x402gate.django under WSGI: a real chain, waitress, and the official ``requests`` client.

Checked as an API owner would: the 402 an official client pays, the content and receipt it gets,
balances on chain, ``request.payment`` in views, what happens when a view or the settlement
fails, and that a streamed answer produces no content before the payment is settled.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test.utils import override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from x402.http import decode_payment_response_header
from x402.schemas import PaymentRequirements

from x402gate import LocalFacilitator, PaymentGate
from x402gate.django import require_payment
from x402gate.testing.clients import paying_requests_session
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

from .conftest import django_server

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01 in USDC atomic units
CHUNKS = [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]


class Shop:
    """A small Django site that counts view runs and notes the payee's balance at the moment a
    streamed answer produces its first chunk (to tell whether settlement came first)."""

    def __init__(self, token: Any, pay_to: str) -> None:
        self.token, self.pay_to = token, pay_to
        self.calls: Counter[str] = Counter()
        self.payments: list[Any] = []
        self.balance_at_content: dict[str, int] = {}
        self.tx_at_view: dict[str, str | None] = {}

    def _hit(self, name: str, request: HttpRequest) -> None:
        self.calls[name] += 1
        self.payments.append(request.payment)

    def _chunks(self, name: str) -> Iterator[bytes]:
        self.balance_at_content[name] = self.token.balance_of(self.pay_to)
        yield from CHUNKS

    def urls(self) -> list[Any]:
        def paid(request: HttpRequest) -> HttpResponse:
            self._hit("paid", request)
            payment = request.payment
            self.tx_at_view["paid"] = payment.transaction
            return JsonResponse(
                {"content": "PAID-CONTENT", "payer": payment.payer, "amount": payment.amount}
            )

        def boom(request: HttpRequest) -> HttpResponse:
            self._hit("boom", request)
            raise RuntimeError("boom")

        def error(request: HttpRequest) -> HttpResponse:
            self._hit("error", request)
            return JsonResponse({"error": "down"}, status=503)

        @require_payment("$0.01", settlement="before")
        def stream(request: HttpRequest) -> HttpResponse:
            self._hit("stream", request)
            self.tx_at_view["stream"] = request.payment.transaction
            return StreamingHttpResponse(self._chunks("stream"), content_type="text/plain")

        def stream_after(request: HttpRequest) -> HttpResponse:
            self._hit("stream-after", request)
            self.tx_at_view["stream-after"] = request.payment.transaction
            return StreamingHttpResponse(self._chunks("stream-after"), content_type="text/plain")

        @require_payment("$0.01")
        def cheap(request: HttpRequest) -> HttpResponse:
            self._hit("cheap", request)
            return JsonResponse({"content": "CHEAP", "payer": request.payment.payer})

        @require_payment("$0.02", description="An async view")
        async def dear(request: HttpRequest) -> HttpResponse:
            self._hit("dear", request)
            return JsonResponse({"content": "DEAR", "payer": request.payment.payer})

        @method_decorator(require_payment("$0.03"), name="get")
        class Forecast(View):
            def get(view, request: HttpRequest) -> HttpResponse:
                self._hit("forecast", request)
                return JsonResponse({"content": "FORECAST"})

            def post(view, request: HttpRequest) -> HttpResponse:
                return JsonResponse({"content": "free to post"})

        def report(request: HttpRequest, pk: int) -> HttpResponse:
            self._hit("report", request)
            return JsonResponse({"content": f"REPORT-{pk}"})

        def free(request: HttpRequest) -> HttpResponse:
            self.calls["free"] += 1
            paid = request.payment is not None
            return HttpResponse("paid?" if paid else "free", content_type="text/plain")

        return [
            path("paid", paid),
            path("boom", boom),
            path("error", error),
            path("stream", stream),
            path("stream-after", stream_after),
            path("cheap", cheap),
            path("dear", dear),
            path("forecast", Forecast.as_view()),
            path("reports/<int:pk>", report, name="reports-detail"),
            path("free", free),
        ]


ROUTES = {
    "GET /paid": "$0.01",
    "GET /boom": "$0.01",
    "GET /error": "$0.01",
    "GET /stream-after": "$0.01",
    "GET view:reports-detail": {"price": "$0.04", "description": "One report"},
}


@pytest.fixture
def shop(test_token: Any, pay_to: str) -> Shop:
    return Shop(test_token, pay_to)


@pytest.fixture
def site(shop: Shop, gate: PaymentGate) -> Iterator[str]:
    with django_server(shop.urls(), {"GATE": gate, "ROUTES": ROUTES, "DISCOVERY": True}) as url:
        yield url


def requirements_of(response: requests.Response) -> PaymentRequirements:
    assert response.status_code == 402, response.text
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


def signed_header(payer: Any, url: str) -> dict[str, str]:
    requirements = requirements_of(requests.get(url, timeout=30))
    return {"PAYMENT-SIGNATURE": encode_payment(sign_exact_payment(payer, requirements))}


def paid_get(payer: Any, token: Any, url: str) -> requests.Response:
    with paying_requests_session(payer, asset=token) as session:
        return session.get(url, timeout=30)


# -- the 402, and paid calls through the official client ----------------------------------------


def test_unpaid_request_gets_a_402_with_terms_and_free_views_pass(
    site: str, shop: Shop, test_token: Any, pay_to: str
) -> None:
    response = requests.get(f"{site}/paid", timeout=30)
    page = requests.get(f"{site}/paid", headers={"Accept": "text/html"}, timeout=30)
    free = requests.get(f"{site}/free", timeout=30)
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None and required.resource.url == f"{site}/paid"
    (terms,) = required.accepts
    assert (terms.scheme, terms.amount, terms.asset, terms.pay_to) == (
        "exact",
        str(PRICE),
        test_token.address,
        pay_to,
    )
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
    assert response.json()["error"] == "payment_required"
    assert page.status_code == 402 and page.headers["content-type"].startswith("text/html")
    assert "Payment required" in page.text
    assert (free.status_code, free.text) == (200, "free")
    assert shop.calls == {"free": 1}


def test_paid_request_is_served_with_a_receipt_and_moves_exactly_the_price(
    site: str, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    payer_before = test_token.balance_of(payer.address)
    response = paid_get(payer, test_token, f"{site}/paid")
    assert response.status_code == 200, response.text
    assert response.json() == {"content": "PAID-CONTENT", "payer": payer.address, "amount": PRICE}
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.payer == payer.address
    assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    assert "private" in response.headers["cache-control"]
    assert "PAYMENT-RESPONSE" in response.headers["access-control-expose-headers"]
    assert test_token.balance_of(payer.address) == payer_before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert shop.calls == {"paid": 1}
    # With settlement "after", the view runs before the money moves.
    assert shop.tx_at_view == {"paid": None}
    assert shop.payments[0].payer == payer.address
    assert shop.payments[0].transaction == receipt.transaction


@pytest.mark.parametrize(
    ("url_path", "price", "content"),
    [
        ("/cheap", 10_000, "CHEAP"),
        ("/dear", 20_000, "DEAR"),
        ("/forecast", 30_000, "FORECAST"),
        ("/reports/7", 40_000, "REPORT-7"),
    ],
)
def test_each_view_has_its_own_price_decorator_or_view_name(
    url_path: str,
    price: int,
    content: str,
    site: str,
    shop: Shop,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    assert requirements_of(requests.get(site + url_path, timeout=30)).amount == str(price)
    response = paid_get(payer, test_token, site + url_path)
    assert response.status_code == 200, response.text
    assert response.json()["content"] == content
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert test_token.balance_of(pay_to) == price
    assert sum(shop.calls.values()) == 1


def test_a_class_view_charges_only_its_decorated_method(site: str, shop: Shop) -> None:
    assert requests.get(f"{site}/forecast", timeout=30).status_code == 402
    posted = requests.post(f"{site}/forecast", timeout=30)
    assert posted.status_code == 200 and posted.json() == {"content": "free to post"}
    assert "payment-response" not in posted.headers


def test_replay_of_a_settled_payment_is_refused_without_a_transaction(
    site: str,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    header = signed_header(payer, f"{site}/paid")
    first = requests.get(f"{site}/paid", headers=header, timeout=30)
    replay = requests.get(f"{site}/paid", headers=header, timeout=30)
    assert first.status_code == 200
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "PAID-CONTENT" not in replay.text
    assert shop.calls == {"paid": 1}
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


# -- failures charge nothing and serve nothing ---------------------------------------------------


@pytest.mark.parametrize(("url_path", "status"), [("/boom", 500), ("/error", 503)])
def test_a_failing_view_is_not_charged(
    url_path: str,
    status: int,
    site: str,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    header = signed_header(payer, site + url_path)
    response = requests.get(site + url_path, headers=header, timeout=30)
    assert response.status_code == status
    assert "payment-response" not in response.headers
    assert shop.calls == {url_path.strip("/"): 1}
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0
    payload = json.loads(base64.b64decode(header["PAYMENT-SIGNATURE"]))
    nonce = payload["payload"]["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce) is False


def test_failed_settlement_answers_402_and_none_of_the_content(
    shop: Shop, gate: PaymentGate, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    thief = chain.new_account()

    @require_payment("$0.01")
    def drained(request: HttpRequest) -> HttpResponse:
        # The payer empties the wallet while the view runs: the authorization can't settle.
        shop.calls["drained"] += 1
        chain.set_balance(payer.address, 10**18)
        balance = test_token.balance_of(payer.address)
        chain.transact(payer, test_token.contract.functions.transfer(thief.address, balance))
        return HttpResponse("DRAINED-CONTENT")

    with django_server([path("drained", drained)], {"GATE": gate}) as site:
        header = signed_header(payer, f"{site}/drained")
        response = requests.get(f"{site}/drained", headers=header, timeout=30)
    assert response.status_code == 402, response.text
    assert response.json()["error"] == "invalid_exact_evm_insufficient_balance"
    assert "DRAINED-CONTENT" not in response.text
    assert "payment-required" in response.headers
    assert shop.calls == {"drained": 1}
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 502, "facilitator_error"), ("pending", 503, "settlement_pending")],
)
def test_settlement_fault_through_an_http_facilitator_serves_no_content(
    fault: str,
    status: int,
    code: str,
    shop: Shop,
    facilitator: LocalFacilitator,
    test_token: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    # The gate is built from the settings here: FACILITATOR_URL, ASSETS, STORE_URL.
    with FacilitatorServer(facilitator) as service:
        settings = {
            "PAY_TO": pay_to,
            "ASSETS": [test_token.asset],
            "FACILITATOR_URL": service.url,
            "FACILITATOR_TIMEOUT": 5,
            "STORE_URL": f"sqlite:///{tmp_path / 'settings.db'}",
            "ROUTES": ROUTES,
        }
        with django_server(shop.urls(), settings) as site, service.fault("settle", fault):
            headers = [signed_header(payer, f"{site}/{p}") for p in ("paid", "stream-after")]
            paid = requests.get(f"{site}/paid", headers=headers[0], timeout=30)
            streamed = requests.get(f"{site}/stream-after", headers=headers[1], timeout=30)
    for response in (paid, streamed):
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
        assert "PAID-CONTENT" not in response.text and "chunk-0" not in response.text
    assert shop.calls == {"paid": 1, "stream-after": 1}
    assert shop.balance_at_content == {}  # the stream was closed before producing a chunk
    assert test_token.balance_of(pay_to) == 0


# -- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stream", "stream-after"])
def test_a_streamed_answer_produces_content_only_once_paid(
    name: str, site: str, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    response = paid_get(payer, test_token, f"{site}/{name}")
    assert response.status_code == 200, response.text
    assert response.content == b"".join(CHUNKS)
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success
    assert shop.balance_at_content == {name: PRICE}
    # "before" settles before the view runs; "after" once the view returned, before any chunk.
    assert shop.tx_at_view[name] == (receipt.transaction if name == "stream" else None)
    assert test_token.balance_of(pay_to) == PRICE


# -- settings --------------------------------------------------------------------------------


def test_override_settings_changes_prices_on_a_running_server(
    shop: Shop, gate: PaymentGate
) -> None:
    with django_server(shop.urls(), {"GATE": gate, "ROUTES": {"GET /paid": "$0.01"}}) as site:
        before = requirements_of(requests.get(f"{site}/paid", timeout=30)).amount
        new_prices = {"GET /paid": "$0.05", "GET /free": "$0.02"}
        with override_settings(X402GATE={"GATE": gate, "ROUTES": new_prices}):
            during = requirements_of(requests.get(f"{site}/paid", timeout=30)).amount
            free_now_paid = requests.get(f"{site}/free", timeout=30).status_code
        after = requirements_of(requests.get(f"{site}/paid", timeout=30)).amount
        free_again = requests.get(f"{site}/free", timeout=30).status_code
    assert (before, during, after) == ("10000", "50000", "10000")
    assert (free_now_paid, free_again) == (402, 200)


def test_without_the_middleware_a_decorated_view_fails_closed(
    shop: Shop, gate: PaymentGate
) -> None:
    with django_server(shop.urls(), {"GATE": gate}, MIDDLEWARE=[]) as site:
        response = requests.get(f"{site}/cheap", timeout=30)
    assert response.status_code == 500
    assert "CHEAP" not in response.text
    assert shop.calls == {}


def test_resource_url_trusts_forwarded_host_only_when_django_does(
    shop: Shop, gate: PaymentGate
) -> None:
    forwarded = {"X-Forwarded-Host": "api.example.com", "X-Forwarded-Proto": "https"}
    with django_server(shop.urls(), {"GATE": gate, "ROUTES": ROUTES}) as site:
        plain = requests.get(f"{site}/paid", headers=forwarded, timeout=30)
    with django_server(
        shop.urls(),
        {"GATE": gate, "ROUTES": ROUTES},
        USE_X_FORWARDED_HOST=True,
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    ) as site:
        proxied = requests.get(f"{site}/paid?q=1", headers=forwarded, timeout=30)

    def url(response: requests.Response) -> str:
        resource = decode_payment_required(response.headers["payment-required"]).resource
        assert resource is not None
        return resource.url

    assert url(plain).startswith("http://127.0.0.1:")
    assert url(proxied) == "https://api.example.com/paid?q=1"


def test_public_origin_and_trusted_proxies_from_the_settings(
    shop: Shop, gate: PaymentGate, test_token: Any, pay_to: str
) -> None:
    from x402gate.django import get_gate

    settings = {
        "PAY_TO": pay_to,
        "ASSETS": [test_token.asset],
        "FACILITATOR": gate.facilitator,
        "STORE_URL": "memory://",
        "ROUTES": ROUTES,
        "PUBLIC_ORIGIN": "https://shop.example",
        "TRUSTED_PROXIES": ["127.0.0.1"],
    }
    forwarded = {"X-Forwarded-Host": "evil.example", "X-Forwarded-For": "6.6.6.6, 192.0.2.8"}
    seen: list[Any] = []
    with django_server(shop.urls(), settings, USE_X_FORWARDED_HOST=True) as site:
        get_gate().on_event(lambda event: seen.append(event.request.client))
        response = requests.get(f"{site}/paid", headers=forwarded, timeout=30)
    resource = decode_payment_required(response.headers["payment-required"]).resource
    # Even with Django told to believe X-Forwarded-Host, the payment terms name the configured
    # origin; the client is the entry the trusted proxy (the loopback peer here) appended.
    assert resource is not None and resource.url == "https://shop.example/paid"
    assert seen == ["192.0.2.8"]
    assert shop.calls == {}


def test_discovery_lists_routes_view_names_and_decorated_views(site: str) -> None:
    document = requests.get(f"{site}/.well-known/x402", timeout=30).json()
    listed = {
        (item["input"]["method"], item["input"]["routeTemplate"]): item["accepts"][0]["amount"]
        for item in document["items"]
    }
    assert listed == {
        ("GET", "/paid"): "10000",
        ("GET", "/boom"): "10000",
        ("GET", "/error"): "10000",
        ("GET", "/stream-after"): "10000",
        ("GET", "/reports/{pk}"): "40000",
        ("GET", "/stream"): "10000",
        ("GET", "/cheap"): "10000",
        ("GET", "/dear"): "20000",
        ("GET", "/forecast"): "30000",
    }
    assert document["x402Version"] == 2
    assert all(item["resource"]["url"].startswith(site) for item in document["items"])
