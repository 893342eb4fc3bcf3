"""Django per-token routes paid by channel vouchers, under WSGI (waitress) and ASGI (uvicorn).

The official Python client opens one channel with one deposit and pays OpenAI- and
Anthropic-shaped answers, JSON and server-sent events, with vouchers. A JSON answer is charged
its tokens exactly; a stream reports its whole step with its headers and earns the tokens it
reported. Checked as a seller would: one deposit on chain, the store's earned total equal to the
tokens used, never a refused payment (no corrective 402).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from x402gate import LocalFacilitator, PaymentGate
from x402gate._runner import run_sync
from x402gate.gate import ChannelSettings
from x402gate.metering import PerToken, TokenPrice

from .conftest import django_server

pytest.importorskip("uvicorn")

# $1 per 1k input tokens, $2 per 1k output tokens: 1,000 / 2,000 atomic units a token.
PRICES = TokenPrice(input="$1", output="$2", per=1_000)
PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
DEPOSIT_FLOOR = 5_000_000  # one deposit covers every request of the test


def cost(input_tokens: int, output_tokens: int) -> int:
    return input_tokens * 1_000 + output_tokens * 2_000


def openai_sse() -> list[bytes]:
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"content": word}}]} for word in ("Hello", " there")
    ]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 40}})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def anthropic_sse() -> list[bytes]:
    events = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9}}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "Hi"}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 25}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


STREAMS = {"openai-stream": openai_sse(), "anthropic-stream": anthropic_sse()}
BODIES = {
    "openai-json": {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 30}},
    "anthropic-json": {"content": [], "usage": {"input_tokens": 5, "output_tokens": 20}},
}
USED = {
    "openai-json": cost(7, 30),
    "anthropic-json": cost(5, 20),
    "openai-stream": cost(12, 40),
    "anthropic-stream": cost(9, 25),
}


@contextlib.contextmanager
def serve_django(gate: PaymentGate, runs: list[str], asgi: bool) -> Iterator[str]:
    """A Django site with one per-token view answering the kind its URL names."""
    if asgi:

        async def chat(request: HttpRequest, kind: str) -> HttpResponse:
            runs.append(kind)
            if kind in BODIES:
                return JsonResponse(BODIES[kind])

            async def events() -> AsyncIterator[bytes]:
                for chunk in STREAMS[kind]:
                    yield chunk
                    await asyncio.sleep(0)

            return StreamingHttpResponse(events(), content_type="text/event-stream")

    else:

        def chat(request: HttpRequest, kind: str) -> HttpResponse:  # type: ignore[misc]
            runs.append(kind)
            if kind in BODIES:
                return JsonResponse(BODIES[kind])
            return StreamingHttpResponse(iter(STREAMS[kind]), content_type="text/event-stream")

    routes = {"POST /v1/*": gate.route(PerToken({"gpt-*": PRICES}))}
    with django_server(
        [path("v1/<str:kind>", chat)], {"GATE": gate, "ROUTES": routes}, asgi=asgi
    ) as url:
        yield url


class Wire(httpx.AsyncBaseTransport):
    """The network under the official client's transport: the payments it sent and the
    payments answered 402."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.payments: list[dict[str, Any]] = []
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers:
            self.payments.append(json.loads(base64.b64decode(request.headers["payment-signature"])))
        response = await self.inner.handle_async_request(request)
        if response.status_code == 402 and "payment-signature" in request.headers:
            self.refused += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def receipt_of(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["payment-response"]))
    return decoded


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_django_per_token_routes_earn_the_tokens_used_from_one_deposit(
    asgi: bool,
    chain: Any,
    test_token: Any,
    payer: Any,
    facilitator_account: Any,
    channel_contracts: Any,
    tmp_path: Any,
) -> None:
    from x402 import x402Client
    from x402.http.clients import x402_httpx_transport
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    from x402gate.testing.clients import spend_controls_for

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=LocalFacilitator(
            chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
        ),
        store=f"sqlite:///{tmp_path / 'django.db'}",
        limit_in_flight=False,
        secret=b"k" * 32,
        public_origin="http://llm.test",
        channels=ChannelSettings(
            receiver_authorizer=chain.new_account().address, min_deposit=DEPOSIT_FLOOR
        ),
    )
    client = x402Client()
    client.register(test_token.asset.network, BatchSettlementEvmScheme(EthAccountSigner(payer)))
    client.set_spend_controls(spend_controls_for(test_token.asset))
    before = test_token.balance_of(payer.address)
    order = ["openai-json", "openai-stream", "anthropic-json", "anthropic-stream"] * 2
    runs: list[str] = []
    wire = Wire()

    async def pay(url: str) -> tuple[str, int]:
        transport = x402_httpx_transport(client, wire)
        charged_total = 0
        channel_id = ""
        async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
            challenge = await plain.post("/v1/openai-json", json=PROMPT)
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as http:
            assert challenge.status_code == 402
            offered = json.loads(base64.b64decode(challenge.headers["payment-required"]))
            assert [a["scheme"] for a in offered["accepts"]] == ["batch-settlement", "exact"]
            for kind in order:
                response = await http.post(f"/v1/{kind}", json=PROMPT)
                assert response.status_code == 200, response.text
                extra = receipt_of(response)["extra"]
                charged = int(extra["chargedAmount"])
                if kind.endswith("json"):
                    assert charged == USED[kind]  # measured before the headers went out
                else:
                    assert charged >= USED[kind]  # the whole step, earned as far as used
                charged_total += charged
                assert extra["channelState"]["chargedCumulativeAmount"] == str(charged_total)
                channel_id = extra["channelState"]["channelId"]
        return channel_id, charged_total

    with serve_django(gate, runs, asgi) as url:
        channel_id, charged_total = asyncio.run(pay(url))
    try:
        assert wire.refused == 0  # never a corrective 402 nor a refused voucher
        kinds = [p["payload"]["type"] for p in wire.payments]
        assert kinds == ["deposit"] + ["voucher"] * (len(order) - 1)
        deposit = int(wire.payments[0]["payload"]["deposit"]["amount"])
        assert test_token.balance_of(payer.address) == before - deposit
        on_chain = channel_contracts.channel(channel_id)
        assert on_chain.balance == deposit and on_chain.total_claimed == 0
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.step is None
        assert stored.earned == sum(USED[k] for k in order)
        assert stored.charged == charged_total <= stored.max_claimable
        assert runs == order
    finally:
        run_sync(gate.aclose())
