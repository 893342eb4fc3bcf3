"""Metered routes paid by channel vouchers: the official client pays per token and per second.

A metered route lists ``batch-settlement`` first. The voucher's ceiling is the request's quote;
the seller earns what the answer used. A JSON answer is measured before its headers go out and
its payment response carries the exact charge; a streamed one (server-sent events) reports its
whole step (so the client's count stays in step and it never meets a corrective 402) while the
store's ``earned`` counts only the tokens the stream reported. Checked through real servers
(uvicorn, waitress) with the official client and facilitator on the local chain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.gate import ChannelSettings
from x402gate.metering import PerSecond, PerToken, TokenPrice

from ._kit import SdkFacilitator, channel_client, committed_channel

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

# $1 per 1k input tokens, $2 per 1k output tokens: 1,000 / 2,000 atomic units a token.
PRICES = TokenPrice(input="$1", output="$2", per=1_000)
PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
DEPOSIT_FLOOR = 5_000_000  # $5: one deposit covers every request of a test
SECOND = 1_000  # $0.001 a second


def openai_sse(prompt_tokens: int, completion_tokens: int) -> list[bytes]:
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"content": word}}]} for word in ("Hello", " there", "!")
    ]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    chunks.append({"choices": [], "usage": usage})
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


STREAMS = {"openai-stream": openai_sse(12, 40), "anthropic-stream": anthropic_sse(12, 40)}
BODIES = {
    "openai-json": {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 30}},
    "anthropic-json": {"content": [], "usage": {"input_tokens": 7, "output_tokens": 30}},
}
CHARGES = {
    "openai-stream": 12 * 1_000 + 40 * 2_000,
    "anthropic-stream": 12 * 1_000 + 40 * 2_000,
    "openai-json": 7 * 1_000 + 30 * 2_000,
    "anthropic-json": 7 * 1_000 + 30 * 2_000,
}


def routes(gate: PaymentGate) -> dict[str, Any]:
    return {
        "POST /v1/*": gate.route(PerToken({"gpt-*": PRICES})),
        "GET /work": gate.route(PerSecond("$0.001", max_seconds=2)),
    }


def make_asgi(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def chat(request: Request) -> Response:
        kind = request.path_params["kind"]
        runs[kind] = runs.get(kind, 0) + 1
        if kind == "broken":
            raise RuntimeError("upstream failed before answering")
        if kind == "refused":
            return JSONResponse({"error": "overloaded"}, status_code=529)
        if kind in BODIES:
            return JSONResponse(BODIES[kind])

        async def gen() -> AsyncIterator[bytes]:
            for chunk in STREAMS[kind]:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def work(request: Request) -> Response:
        runs["work"] = runs.get("work", 0) + 1
        await asyncio.sleep(0.3)
        return JSONResponse({"done": True})

    app = Starlette(routes=[Route("/v1/{kind}", chat, methods=["POST"]), Route("/work", work)])
    return PaymentMiddleware(app, gate=gate, routes=routes(gate))


def make_wsgi(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "/")
        kind = path.rsplit("/", 1)[-1]
        runs[kind] = runs.get(kind, 0) + 1
        if kind == "work":
            time.sleep(0.3)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"done": true}']
        if kind == "broken":
            raise RuntimeError("upstream failed before answering")
        if kind == "refused":
            start_response("529 Overloaded", [("Content-Type", "application/json")])
            return [b'{"error": "overloaded"}']
        if kind in BODIES:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(BODIES[kind]).encode()]
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter(STREAMS[kind])

    return PaymentMiddleware(app, gate=gate, routes=routes(gate))


def make_flask(gate: PaymentGate, runs: dict[str, int]) -> Any:
    pytest.importorskip("flask")
    import flask

    from x402gate.flask import X402Gate, require_payment

    app = flask.Flask("metered")
    X402Gate(app, gate=gate)
    per_token = require_payment(PerToken({"gpt-*": PRICES}))

    @app.post("/v1/<kind>")
    @per_token
    def chat(kind: str) -> Any:
        runs[kind] = runs.get(kind, 0) + 1
        if kind == "broken":
            raise RuntimeError("upstream failed before answering")
        if kind == "refused":
            return flask.jsonify({"error": "overloaded"}), 529
        if kind in BODIES:
            return flask.jsonify(BODIES[kind])
        return flask.Response(iter(STREAMS[kind]), mimetype="text/event-stream")

    @app.get("/work")
    @require_payment(PerSecond("$0.001", max_seconds=2))
    def work() -> Any:
        runs["work"] = runs.get("work", 0) + 1
        time.sleep(0.3)
        return flask.jsonify({"done": True})

    return app


def make_fastapi(gate: PaymentGate, runs: dict[str, int]) -> Any:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)
    per_token = require_payment(PerToken({"gpt-*": PRICES}))
    per_second = require_payment(PerSecond("$0.001", max_seconds=2))

    @app.post("/v1/{kind}", dependencies=[Depends(per_token)])
    async def chat(kind: str) -> Response:
        runs[kind] = runs.get(kind, 0) + 1
        if kind == "broken":
            raise RuntimeError("upstream failed before answering")
        if kind == "refused":
            return JSONResponse({"error": "overloaded"}, status_code=529)
        if kind in BODIES:
            return JSONResponse(BODIES[kind])

        async def gen() -> AsyncIterator[bytes]:
            for chunk in STREAMS[kind]:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.get("/work", dependencies=[Depends(per_second)])
    async def work() -> dict[str, bool]:
        runs["work"] = runs.get("work", 0) + 1
        await asyncio.sleep(0.3)
        return {"done": True}

    return app


APPS = {"asgi": make_asgi, "fastapi": make_fastapi, "wsgi": make_wsgi, "flask": make_flask}


@pytest.fixture(params=sorted(APPS))
def served(
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Any,
) -> Iterator[tuple[str, PaymentGate, dict[str, int]]]:
    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        secret=b"k" * 32,
        public_origin="http://llm.test",
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
        ),
    )
    runs: dict[str, int] = {}
    app = APPS[request.param](gate, runs)
    serve = serve_in_thread if request.param in ("asgi", "fastapi") else serve_wsgi
    with serve(app) as base_url:
        yield base_url, gate, runs
    gate.close()


class Counting(httpx.AsyncBaseTransport):
    """The wire under the paying transport: every status the server answered."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[int] = []
        self.refused_payments = 0
        """402s answered to a request that carried a payment (corrective 402s included)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        if response.status_code == 402 and "payment-signature" in request.headers:
            self.refused_payments += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def receipt_of(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["payment-response"]))
    return decoded


async def test_metered_routes_list_batch_settlement_first(served: Any) -> None:
    base_url, _, runs = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.post("/v1/openai-json", json=PROMPT)
    assert answer.status_code == 402
    accepts = json.loads(base64.b64decode(answer.headers["payment-required"]))["accepts"]
    assert [a["scheme"] for a in accepts] == ["batch-settlement", "exact"]
    # The voucher's ceiling is the same quote exact would collect whole.
    assert accepts[0]["amount"] == accepts[1]["amount"]
    assert runs == {}


async def test_per_token_answers_earn_the_tokens_used_and_the_client_keeps_paying(
    served: Any,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
) -> None:
    from x402.http.clients import x402_httpx_transport

    base_url, gate, runs = served
    wire = Counting()
    client = channel_client(payer, test_token)
    transport = x402_httpx_transport(client, wire)
    order = ["openai-json", "openai-stream", "anthropic-json", "anthropic-stream"] * 2
    steps = 0
    channel_id = ""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for kind in order:
            response = await http.post(f"/v1/{kind}", json=PROMPT)
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            state = receipt["extra"]["channelState"]
            channel_id = state["channelId"]
            charged = int(receipt["extra"]["chargedAmount"])
            if kind.endswith("json"):
                # Measured before the headers: the exact charge.
                assert charged == CHARGES[kind]
            else:
                # Streamed: the whole step, earned only as far as used (checked below).
                assert charged >= CHARGES[kind]
            steps += charged
            assert state["chargedCumulativeAmount"] == str(steps)
        # A failed handler (an error status, or one that raised) charges nothing.
        refused = await http.post("/v1/refused", json=PROMPT)
        assert refused.status_code == 529
        # Servers close the connection of an app that raised: not one to reuse.
        closing = {"Connection": "close"}
        try:
            broken = await http.post("/v1/broken", json=PROMPT, headers=closing)
        except httpx.HTTPError:
            pass  # waitress drops it without an answer
        else:
            assert broken.status_code == 500
        again = await http.post("/v1/openai-json", json=PROMPT)
        assert again.status_code == 200, again.text
        steps += int(receipt_of(again)["extra"]["chargedAmount"])
    # Never a corrective 402: the client's count kept in step with the server's.
    assert wire.refused_payments == 0, wire.statuses
    assert facilitator.settled == 1  # the one deposit
    earned = sum(CHARGES[k] for k in order) + CHARGES["openai-json"]
    stored = await committed_channel(gate.store, channel_id)
    assert stored is not None
    assert stored.earned == earned
    assert stored.charged == steps
    assert stored.charged <= stored.max_claimable  # the last voucher's ceiling
    assert stored.step is None
    on_chain = channel_contracts.channel(channel_id)
    assert on_chain.total_claimed == 0
    assert on_chain.balance >= stored.charged
    assert runs.get("refused") == 1


async def test_per_second_answers_earn_the_time_they_ran(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    from x402.http.clients import x402_httpx_transport

    base_url, gate, runs = served
    wire = Counting()
    transport = x402_httpx_transport(channel_client(payer, test_token), wire)
    channel_id = ""
    total = 0
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for _ in range(3):
            response = await http.get("/work")
            assert response.status_code == 200, response.text
            receipt = receipt_of(response)
            charged = int(receipt["extra"]["chargedAmount"])
            # 0.3 s of work at $0.001 a second: far below the 2-second ceiling.
            assert 300 <= charged < 1_000, charged
            total += charged
            channel_id = receipt["extra"]["channelState"]["channelId"]
    assert wire.refused_payments == 0, wire.statuses
    stored = await committed_channel(gate.store, channel_id)
    assert stored is not None and stored.earned == stored.charged == total
    assert runs["work"] == 3


async def test_a_client_leaving_mid_stream_is_charged_what_it_used(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    """The answer's step goes out with its headers; the client reads one event and leaves:
    the step is committed (the count stays in step) and the seller earns at most the quote."""
    from x402.http.clients import x402_httpx_transport

    base_url, gate, _ = served
    transport = x402_httpx_transport(channel_client(payer, test_token), httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        first = await http.post("/v1/openai-json", json=PROMPT)
        assert first.status_code == 200
        channel_id = receipt_of(first)["extra"]["channelState"]["channelId"]
        async with http.stream("POST", "/v1/openai-stream", json=PROMPT) as stream:
            assert stream.status_code == 200
            step = int(receipt_of(stream)["extra"]["chargedAmount"])
            async for _ in stream.aiter_raw():
                break
        # The next paid request is served: the step was committed, not left held.
        after = await http.post("/v1/openai-json", json=PROMPT)
        assert after.status_code == 200, after.text
    stored = await committed_channel(gate.store, channel_id)
    assert stored is not None and stored.step is None
    assert stored.charged == 2 * CHARGES["openai-json"] + step
    assert 2 * CHARGES["openai-json"] <= stored.earned <= stored.charged


async def test_a_refund_after_streams_returns_all_that_was_not_earned(
    served: Any, payer: LocalAccount, test_token: TestToken, channel_contracts: ChannelContracts
) -> None:
    """Streams move the client's count by their whole step but earn only what they used: the
    refund claims what was earned and returns the rest, the unused part of each step too."""
    from x402.http.clients import x402_httpx_transport

    from .test_refunds import _client

    base_url, gate, runs = served
    client, scheme = _client(payer, test_token)
    before = test_token.balance_of(payer.address)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for _ in range(2):
            response = await http.post("/v1/openai-stream", json=PROMPT)
            assert response.status_code == 200, response.text
            channel_id = receipt_of(response)["extra"]["channelState"]["channelId"]
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.earned == 2 * CHARGES["openai-stream"] < stored.charged
    deposit = channel_contracts.channel(channel_id).balance
    ran = dict(runs)
    # Any paid GET route of the gate backs the same channel.
    settled = await asyncio.to_thread(scheme.refund, base_url + "/work")
    assert settled.success is True
    assert int(settled.amount) == deposit - stored.earned
    assert runs == ran  # the route was not run
    on_chain = channel_contracts.channel(channel_id)
    assert (on_chain.total_claimed, on_chain.available) == (stored.earned, 0)
    assert test_token.balance_of(payer.address) == before - stored.earned
