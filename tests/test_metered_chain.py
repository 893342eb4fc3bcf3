"""Metered billing on the real chain: pay the quote once, be charged what was used, spend the
change as credit with no new transaction. The official x402 client pays; anvil settles."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as StarletteRoute

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.credit import SESSION_HEADER
from x402gate.errors import StoreError
from x402gate.metering import PerSecond, PerToken, TokenPrice
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.payments import decode_payment_required

pytestmark = pytest.mark.chain

# $1 per 1k input tokens and $2 per 1k output tokens: 1,000 / 2,000 micro-dollars a token.
PRICES = TokenPrice(input="$1", output="$2", per=1_000)
TOPUP = 500_000
PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi!"}]}


def openai_sse(prompt_tokens: int, completion_tokens: int) -> list[bytes]:
    chunks: list[dict[str, object]] = [
        {"choices": [{"delta": {"content": word}}]} for word in ("Hello", " there", "!")
    ]
    chunks.append(
        {
            "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
    )
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def anthropic_sse(input_tokens: int, output_tokens: int) -> list[bytes]:
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": input_tokens, "output_tokens": 1}},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


@pytest.fixture
def gate(
    facilitator: LocalFacilitator, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'ledger.db'}",
        secret=b"k" * 32,
        public_origin="http://llm.test",
    )
    yield g
    g.close()


def llm_app(
    gate: PaymentGate, streams: dict[str, list[bytes]], bodies: dict[str, Any]
) -> PaymentMiddleware:
    async def chat(request: Request) -> Any:
        kind = request.path_params["kind"]
        if kind == "broken":
            raise RuntimeError("upstream failed before answering")
        if kind in bodies:
            return JSONResponse(bodies[kind])

        async def gen() -> AsyncIterator[bytes]:
            for chunk in streams[kind]:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def work(request: Request) -> JSONResponse:
        await asyncio.sleep(0.3)
        return JSONResponse({"done": True})

    app = Starlette(
        routes=[StarletteRoute("/v1/{kind}", chat, methods=["POST"]), StarletteRoute("/work", work)]
    )
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            # A payment tops up at least $0.50: what the call does not use is credit for the next.
            "POST /v1/*": gate.route(
                PerToken({"gpt-*": PRICES, "claude-*": PRICES}), credit_topup="$0.50"
            ),
            "GET /work": gate.route(PerSecond("$0.001", max_seconds=2)),
        },
    )


def client_for(payer: Any, token: Any, app: Any) -> httpx.AsyncClient:
    return paying_httpx_client(
        payer, asset=token, base_url="http://llm.test", transport=httpx.ASGITransport(app=app)
    )


async def quote_of(app: Any, path: str, body: Any = None, method: str = "POST") -> int:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://llm.test"
    ) as c:
        response = await c.request(method, path, json=body)
    assert response.status_code == 402
    return int(decode_payment_required(response.headers["payment-required"]).accepts[0].amount)


@pytest.mark.parametrize(
    ("kind", "expected_charge"),
    [
        ("openai-stream", 12 * 1_000 + 40 * 2_000),  # 12 in, 40 out: $0.012 + $0.08
        ("anthropic-stream", 12 * 1_000 + 40 * 2_000),
        ("openai-json", 7 * 1_000 + 30 * 2_000),
        ("anthropic-json", 7 * 1_000 + 30 * 2_000),
    ],
)
async def test_per_token_charges_the_tokens_used_and_keeps_the_change_as_credit(
    kind: str,
    expected_charge: int,
    gate: PaymentGate,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    streams = {"openai-stream": openai_sse(12, 40), "anthropic-stream": anthropic_sse(12, 40)}
    bodies = {
        "openai-json": {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 30}},
        "anthropic-json": {"content": [], "usage": {"input_tokens": 7, "output_tokens": 30}},
    }
    app = llm_app(gate, streams, bodies)
    body = {**PROMPT, "model": "claude-test" if kind.startswith("anthropic") else "gpt-test"}
    quote = await quote_of(app, f"/v1/{kind}", body)
    assert quote == TOPUP > expected_charge
    payer_before = test_token.balance_of(payer.address)

    async with client_for(payer, test_token, app) as client:
        first = await client.post(f"/v1/{kind}", json=body)
    assert first.status_code == 200
    if kind in streams:
        assert first.content == b"".join(streams[kind])  # the stream arrived intact, in order
    # On chain: exactly the quote moved, in one transaction.
    assert test_token.balance_of(payer.address) == payer_before - quote
    assert test_token.balance_of(pay_to) == quote
    assert chain.tx_count(facilitator.address) == 1
    # In the ledger: the change is the payer's credit.
    assert await gate.balance(payer.address) == quote - expected_charge

    # A second request with the session token is served from credit: no payment, no transaction.
    token = first.headers[SESSION_HEADER]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://llm.test"
    ) as plain:
        second = await plain.post(f"/v1/{kind}", json=body, headers={SESSION_HEADER: token})
    assert second.status_code == 200
    assert "payment-response" not in second.headers
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == quote
    assert await gate.balance(payer.address) == quote - 2 * expected_charge


async def test_credit_short_of_the_quote_asks_only_for_what_is_missing(
    gate: PaymentGate, test_token: Any, payer: Any
) -> None:
    app = llm_app(gate, {"openai-stream": openai_sse(12, 40)}, {})
    quote = await quote_of(app, "/v1/openai-stream", PROMPT)
    async with client_for(payer, test_token, app) as client:
        first = await client.post("/v1/openai-stream", json=PROMPT)
    token = first.headers[SESSION_HEADER]
    credit = await gate.balance(payer.address)
    bigger = {**PROMPT, "max_tokens": 500}
    big_quote = await quote_of(app, "/v1/openai-stream", bigger)
    assert big_quote > credit
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://llm.test"
    ) as plain:
        response = await plain.post(
            "/v1/openai-stream", json=bigger, headers={SESSION_HEADER: token}
        )
    assert response.status_code == 402
    asked = decode_payment_required(response.headers["payment-required"]).accepts[0].amount
    assert int(asked) == max(big_quote - credit, TOPUP)
    assert quote == TOPUP


async def test_a_failed_handler_returns_the_whole_reservation_to_credit(
    gate: PaymentGate, test_token: Any, payer: Any
) -> None:
    app = llm_app(gate, {"openai-stream": openai_sse(12, 40)}, {})
    async with client_for(payer, test_token, app) as client:
        first = await client.post("/v1/openai-stream", json=PROMPT)
    credit = await gate.balance(payer.address)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://llm.test",
    ) as plain:
        token = first.headers[SESSION_HEADER]
        failed = await plain.post("/v1/broken", json=PROMPT, headers={SESSION_HEADER: token})
    assert failed.status_code == 500
    assert await gate.balance(payer.address) == credit


async def test_per_second_charges_the_measured_time(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = llm_app(gate, {}, {})
    quote = await quote_of(app, "/work", method="GET")
    assert quote == 2_000  # $0.001 a second, at most 2 s
    async with client_for(payer, test_token, app) as client:
        response = await client.get("/work")
    assert response.status_code == 200
    charged = quote - await gate.balance(payer.address)
    # The handler sleeps 0.3 s; settlement and scheduling add a little: 0.3-0.8 s is accepted.
    assert 300 <= charged <= 800, charged
    assert test_token.balance_of(pay_to) == quote


@pytest.mark.web3v7
async def test_the_official_client_signs_in_with_x_and_spends_its_credit(
    gate: PaymentGate,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    # The official SIWX client needs x402[extensions], which pins web3 7: CI runs this test in
    # its web3-7 environment with X402GATE_REQUIRE_SIWX=1, so it can never skip there.
    import os

    try:
        import siwe  # noqa: F401
    except ImportError:
        if os.environ.get("X402GATE_REQUIRE_SIWX") == "1":
            pytest.fail("signinwithethereum is required (X402GATE_REQUIRE_SIWX=1)")
        pytest.skip("the official SIWX client needs x402[extensions] (web3 7)")
    from x402.extensions.sign_in_with_x import (
        CreateSIWxClientExtensionOptions,
        create_siwx_client_extension,
    )
    from x402.http.clients import x402_httpx_transport

    from x402gate.testing.clients import x402_client

    app = llm_app(gate, {"openai-stream": openai_sse(12, 40)}, {})
    client = x402_client(payer, asset=test_token)
    client.register_extension(
        create_siwx_client_extension(CreateSIWxClientExtensionOptions(signers=[payer]))
    )
    transport = x402_httpx_transport(client, httpx.ASGITransport(app=app))
    async with httpx.AsyncClient(transport=transport, base_url="http://llm.test") as http:
        first = await http.post("/v1/openai-stream", json=PROMPT)  # no credit yet: it pays
        assert first.status_code == 200 and "payment-response" in first.headers
        second = await http.post("/v1/openai-stream", json=PROMPT)  # signs in, spends credit
    assert second.status_code == 200
    assert "payment-response" not in second.headers
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == TOPUP
    assert await gate.balance(payer.address) == TOPUP - 2 * (12 * 1_000 + 40 * 2_000)


class Outage:
    """Makes one store method fail, as a database restarting would, while ``down`` is set."""

    def __init__(self, gate: PaymentGate, method: str) -> None:
        self.real = getattr(gate.store, method)
        self.down = True
        self.failed = 0

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failed += 1
                raise StoreError("connection refused")
            return self.real(*args, **kwargs)

        setattr(gate.store, method, flaky)


async def pay_during_outage(
    gate: PaymentGate, payer: Any, test_token: Any, method: str
) -> tuple[Any, Outage, httpx.Response]:
    """A paid request while ``method`` of the store fails past the (short) retry budget."""
    gate.store_retry_seconds = 0.2
    app = llm_app(gate, {"openai-stream": openai_sse(12, 40)}, {})
    outage = Outage(gate, method)
    async with client_for(payer, test_token, app) as client:
        paid = await client.post("/v1/openai-stream", json=PROMPT)
    return app, outage, paid


async def spend_credit(app: Any, token: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://llm.test"
    ) as plain:
        return await plain.post("/v1/openai-stream", json=PROMPT, headers={SESSION_HEADER: token})


async def test_a_store_back_within_the_retry_budget_serves_the_paid_request(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = llm_app(gate, {"openai-stream": openai_sse(12, 40)}, {})
    outage = Outage(gate, "credit_topup")
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, setattr, outage, "down", False)  # back half a second later
    async with client_for(payer, test_token, app) as client:
        paid = await client.post("/v1/openai-stream", json=PROMPT)
    assert paid.status_code == 200 and outage.failed >= 2
    assert test_token.balance_of(pay_to) == TOPUP
    assert await gate.balance(payer.address) == TOPUP - (12 * 1_000 + 40 * 2_000)
    assert gate.holds.owed() == []


async def test_a_top_up_settled_during_a_store_outage_is_credited_once_it_is_back(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    app, outage, paid = await pay_during_outage(gate, payer, test_token, "credit_topup")
    # Settled on chain, not served: the payer is told its payment is credit to come, and
    # gets the token to spend it with.
    assert test_token.balance_of(pay_to) == TOPUP
    assert paid.status_code == 503
    assert paid.json()["error"] == "store_unavailable"
    assert "do not pay again" in paid.json()["message"]
    token = paid.headers[SESSION_HEADER]
    assert len(gate.holds.owed()) == 1
    gate.holds.renew()  # the store is still down: still owed
    assert len(gate.holds.owed()) == 1
    outage.down = False
    gate.holds.renew()
    assert gate.holds.owed() == []
    assert await gate.balance(payer.address) == TOPUP
    # The payer spends it with the token: no second payment, no second transaction.
    assert (await spend_credit(app, token)).status_code == 200
    assert test_token.balance_of(pay_to) == TOPUP
    assert await gate.balance(payer.address) == TOPUP - (12 * 1_000 + 40 * 2_000)


async def test_a_top_up_whose_hold_the_store_refuses_is_credit_spent_with_the_token(
    gate: PaymentGate, test_token: Any, payer: Any
) -> None:
    app, outage, paid = await pay_during_outage(gate, payer, test_token, "credit_reserve")
    assert paid.status_code == 503 and SESSION_HEADER in paid.headers
    assert gate.holds.owed() == []  # the top-up itself went through
    outage.down = False
    assert await gate.balance(payer.address) == TOPUP
    assert (await spend_credit(app, paid.headers[SESSION_HEADER])).status_code == 200
