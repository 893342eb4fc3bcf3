"""A metered answer that outlives its credit hold is still paid, and one that reaches its paid
maximum is ended there — on every integration, behind a real server.

Each app is served for real (uvicorn for ASGI and FastAPI, waitress for WSGI and Flask; Django
in tests/integrations/django/test_django_metered.py, the gateway in
tests/gateway/test_gateway_holds.py) with a gate on a test clock: the test moves the clock past
``credit_ttl_seconds`` while a stream is held open, and checks what the payer could do meanwhile
and what the ledger charged afterwards. Credit is put in the ledger directly and spent with a
session token: no chain is needed to pay from credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from eth_account import Account
from x402.schemas import SupportedKind, SupportedResponse

from x402gate import ConfigurationError, PaymentGate
from x402gate._holds import HoldKeeper
from x402gate.assets import Asset
from x402gate.credit import SESSION_HEADER
from x402gate.metering import PerSecond, PerToken, TokenPrice
from x402gate.stores.base import credit_account

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address
PAYER = Account.create().address
ACCOUNT = credit_account(ASSET.network, ASSET.address, PAYER)
# $1 per 1k tokens, at most 100 output tokens: a quote of $0.10 (100,000 units of USDC).
PRICES = TokenPrice(input="$1", output="$1", per=1_000)
CHAT_QUOTE = 100_000
USED = (5, 7)  # prompt and completion tokens the held stream reports at its end
CHAT_CHARGE = (USED[0] + USED[1]) * 1_000
TICK_PRICE = "$0.01"  # per second
TICK_MAX_SECONDS = 2
TICK_QUOTE = 20_000
TTL = 60
WAIT = 10.0  # the most any step of these tests waits for the server


class Clock:
    """The gate's clock, moved by the test."""

    def __init__(self) -> None:
        self.t = time.time()
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


class StubFacilitator:
    """Only start-up asks it anything: requests served from credit never pay."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment expected")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment expected")


@dataclass
class Controls:
    """What the test tells the handlers, and what they tell the test."""

    go: threading.Event = field(default_factory=threading.Event)
    ticks: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)


def chat_events() -> tuple[bytes, list[bytes]]:
    """The first event of the held stream, and the rest (with the usage) once let go."""
    usage = {"prompt_tokens": USED[0], "completion_tokens": USED[1]}
    first = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    rest = [
        f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode(),
        b"data: [DONE]\n\n",
    ]
    return first, rest


def chat_sync(controls: Controls) -> Iterator[bytes]:
    first, rest = chat_events()
    yield first
    controls.go.wait(WAIT * 3)
    yield from rest


async def chat_async(controls: Controls) -> AsyncIterator[bytes]:
    first, rest = chat_events()
    yield first
    for _ in range(int(WAIT * 300)):
        if controls.go.is_set():
            break
        await asyncio.sleep(0.01)
    for event in rest:
        yield event


def tick_sync(controls: Controls) -> Iterator[bytes]:
    try:
        for _ in range(3000):  # 30 s at most: far longer than the test lets it run
            controls.ticks += 1
            yield b"tick\n"
            time.sleep(0.01)
    finally:
        controls.stopped.set()


async def tick_async(controls: Controls) -> AsyncIterator[bytes]:
    try:
        for _ in range(3000):
            controls.ticks += 1
            yield b"tick\n"
            await asyncio.sleep(0.01)
    finally:
        controls.stopped.set()


async def quiet_async(controls: Controls) -> AsyncIterator[bytes]:
    """One chunk, then silence for 30 s (far longer than the test lets it run), then more."""
    try:
        controls.ticks += 1
        yield b"tick\n"
        await asyncio.sleep(30)
        controls.ticks += 1
        yield b"too late\n"
    finally:
        controls.stopped.set()


def chat_price() -> PerToken:
    return PerToken(PRICES, max_output_tokens=100)


def tick_price() -> PerSecond:
    return PerSecond(TICK_PRICE, max_seconds=TICK_MAX_SECONDS)


# -- the apps, one per integration ------------------------------------------------------------


@contextlib.contextmanager
def serve_asgi_app(gate: PaymentGate, controls: Controls) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.testing.fake_llm import serve_asgi

    async def chat(request: Any) -> StreamingResponse:
        return StreamingResponse(chat_async(controls), media_type="text/event-stream")

    async def tick(request: Any) -> StreamingResponse:
        return StreamingResponse(tick_async(controls), media_type="text/plain")

    async def quiet(request: Any) -> StreamingResponse:
        return StreamingResponse(quiet_async(controls), media_type="text/plain")

    app = Starlette(routes=[Route("/chat", chat), Route("/tick", tick), Route("/quiet", quiet)])
    routes = {
        "GET /chat": gate.route(chat_price()),
        "GET /tick": gate.route(tick_price()),
        "GET /quiet": gate.route(tick_price()),
    }
    with serve_asgi(PaymentMiddleware(app, gate=gate, routes=routes)) as url:
        yield url


@contextlib.contextmanager
def serve_fastapi_app(gate: PaymentGate, controls: Controls) -> Iterator[str]:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI
    from fastapi.responses import StreamingResponse

    from x402gate.fastapi import install, require_payment
    from x402gate.testing.fake_llm import serve_asgi

    app = FastAPI()
    install(app, gate)

    @app.get("/chat", dependencies=[Depends(require_payment(chat_price(), gate=gate))])
    async def chat() -> StreamingResponse:
        return StreamingResponse(chat_async(controls), media_type="text/event-stream")

    @app.get("/tick", dependencies=[Depends(require_payment(tick_price(), gate=gate))])
    async def tick() -> StreamingResponse:
        return StreamingResponse(tick_async(controls), media_type="text/plain")

    @app.get("/quiet", dependencies=[Depends(require_payment(tick_price(), gate=gate))])
    async def quiet() -> StreamingResponse:
        return StreamingResponse(quiet_async(controls), media_type="text/plain")

    with serve_asgi(app) as url:
        yield url


@contextlib.contextmanager
def serve_wsgi_app(gate: PaymentGate, controls: Controls) -> Iterator[str]:
    from x402gate.testing.servers import serve_wsgi
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if environ["PATH_INFO"] == "/chat":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return chat_sync(controls)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return tick_sync(controls)

    routes = {"GET /chat": gate.route(chat_price()), "GET /tick": gate.route(tick_price())}
    with serve_wsgi(PaymentMiddleware(app, gate=gate, routes=routes)) as url:
        yield url


@contextlib.contextmanager
def serve_flask_app(gate: PaymentGate, controls: Controls) -> Iterator[str]:
    pytest.importorskip("flask")
    from flask import Flask, Response

    from x402gate.flask import X402Gate, require_payment
    from x402gate.testing.servers import serve_wsgi

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.get("/chat")
    @require_payment(chat_price())
    def chat() -> Response:
        return Response(chat_sync(controls), mimetype="text/event-stream")

    @app.get("/tick")
    @require_payment(tick_price())
    def tick() -> Response:
        return Response(tick_sync(controls), mimetype="text/plain")

    with serve_wsgi(app) as url:
        yield url


SERVERS: dict[str, Callable[[PaymentGate, Controls], contextlib.AbstractContextManager[str]]] = {
    "asgi": serve_asgi_app,
    "fastapi": serve_fastapi_app,
    "wsgi": serve_wsgi_app,
    "flask": serve_flask_app,
}


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def gate(tmp_path: Any) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=StubFacilitator(),
        store=f"sqlite:///{tmp_path / 'ledger.db'}",
        secret=b"s" * 32,
        credit_ttl_seconds=TTL,
        clock=Clock(),
        public_origin="http://testserver",
    )
    # The gate's own keeper, polling more often so that the test's clock jumps are seen fast.
    g.holds.close()
    g.holds = HoldKeeper(g.store, g.clock, TTL, poll_seconds=0.02)
    yield g
    g.close()


def fund(gate: PaymentGate, amount: int) -> dict[str, str]:
    """Credit ``amount`` to the payer; the headers that spend it."""
    gate.store.credit_topup(ACCOUNT, amount, f"ref-{amount}", gate.clock.now())
    token = gate.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, gate.clock.now(), origin=gate.public_origins[0]
    )
    return {SESSION_HEADER: token}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def let_time_pass(gate: PaymentGate, seconds: float) -> None:
    """Move the gate's clock by ``seconds``, then wait for a renewal pass that saw it."""
    clock: Any = gate.clock
    clock.advance(seconds)
    seen = gate.holds.passes
    wait_for(lambda: gate.holds.passes >= seen + 2, "a renewal pass")  # one began after


def balance(gate: PaymentGate) -> tuple[int, int, int]:
    b = gate.store.credit_balance(ACCOUNT, gate.clock.now())
    return b.available, b.reserved, b.charged


def settled_balance(gate: PaymentGate) -> tuple[int, int, int]:
    """The balance once no reservation is held any more (the commit runs after the answer)."""
    wait_for(lambda: balance(gate)[1] == 0, "the commit")
    return balance(gate)


# -- the hold outlives the TTL while the answer runs ------------------------------------------


@pytest.mark.parametrize("integration", sorted(SERVERS))
def test_a_stream_longer_than_the_ttl_keeps_its_hold_and_is_charged(
    integration: str, gate: PaymentGate
) -> None:
    controls = Controls()
    headers = fund(gate, CHAT_QUOTE)  # exactly one quote: the held stream takes all of it
    with (
        SERVERS[integration](gate, controls) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/chat", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_raw()
        assert next(chunks).startswith(b"data: ")  # the handler runs, the hold is taken
        for _ in range(4):  # 160 s on the gate's clock: well past two TTLs
            let_time_pass(gate, TTL * 2 / 3)
            assert balance(gate) == (0, CHAT_QUOTE, 0)  # still held, never returned
        # The payer's next request is not funded by the running stream's hold.
        refused = client.get("/chat", headers=headers)
        assert refused.status_code == 402
        controls.go.set()
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")
    # Charged what the stream reported, and the change is back with the payer.
    assert settled_balance(gate) == (CHAT_QUOTE - CHAT_CHARGE, 0, CHAT_CHARGE)


def test_a_stream_whose_hold_could_not_be_renewed_is_still_charged(gate: PaymentGate) -> None:
    # The renewals stop (a stalled process, a store that is down): the hold expires while the
    # answer runs and its money goes back. The late commit still charges what was used.
    controls = Controls()
    headers = fund(gate, CHAT_QUOTE)
    gate.holds.close()
    with (
        serve_asgi_app(gate, controls) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/chat", headers=headers) as stream,
    ):
        chunks = stream.iter_raw()
        next(chunks)
        gate.clock.advance(TTL + 1)  # type: ignore[attr-defined]
        assert balance(gate) == (CHAT_QUOTE, 0, 0)  # expired: back with the payer
        controls.go.set()
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    wait_for(lambda: balance(gate)[2] > 0, "the late commit")
    assert balance(gate) == (CHAT_QUOTE - CHAT_CHARGE, 0, CHAT_CHARGE)


# -- a per-second answer ends at its paid maximum ----------------------------------------------


@pytest.mark.parametrize("integration", sorted(SERVERS))
def test_a_per_second_answer_is_ended_at_max_seconds_and_charged_the_cap(
    integration: str, gate: PaymentGate
) -> None:
    controls = Controls()
    headers = fund(gate, 5 * TICK_QUOTE)
    with (
        SERVERS[integration](gate, controls) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/tick", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_raw()
        assert next(chunks).startswith(b"tick")
        gate.clock.advance(TICK_MAX_SECONDS)  # type: ignore[attr-defined]
        # The body ends although the handler would tick for 30 more seconds.
        started = time.monotonic()
        b"".join(chunks)
        assert time.monotonic() - started < WAIT
    wait_for(controls.stopped.is_set, "the handler to be stopped")
    ticks = controls.ticks
    time.sleep(0.1)
    assert controls.ticks == ticks  # nothing runs for nobody
    # Charged exactly the paid maximum, never more.
    assert settled_balance(gate) == (5 * TICK_QUOTE - TICK_QUOTE, 0, TICK_QUOTE)


@pytest.mark.parametrize("integration", ["asgi", "fastapi"])
def test_a_silent_per_second_answer_is_ended_at_max_seconds_too(
    integration: str, gate: PaymentGate
) -> None:
    # The app sends one chunk and then nothing for 30 s: the answer still ends at its paid
    # maximum, not at the app's next chunk.
    controls = Controls()
    headers = fund(gate, 5 * TICK_QUOTE)
    with (
        SERVERS[integration](gate, controls) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/quiet", headers=headers) as stream,
    ):
        chunks = stream.iter_raw()
        assert next(chunks) == b"tick\n"
        gate.clock.advance(TICK_MAX_SECONDS)  # type: ignore[attr-defined]
        started = time.monotonic()
        assert b"".join(chunks) == b""
        assert time.monotonic() - started < WAIT
    wait_for(controls.stopped.is_set, "the handler to be stopped")
    assert controls.ticks == 1
    assert settled_balance(gate) == (4 * TICK_QUOTE, 0, TICK_QUOTE)


# -- configuration ----------------------------------------------------------------------------


def test_a_ttl_shorter_than_the_longest_answer_is_refused_at_route_construction(
    gate: PaymentGate,
) -> None:
    from x402gate.gate import HOLD_MARGIN_SECONDS

    with pytest.raises(ConfigurationError, match=r"credit_ttl_seconds \(60\).*max_seconds \(31\)"):
        gate.route(PerSecond("$0.01", max_seconds=TTL - HOLD_MARGIN_SECONDS + 1))
    with pytest.raises(ConfigurationError, match="credit_ttl_seconds"):
        gate.route(PerSecond("$0.01", max_seconds=3600))
    assert gate.route(PerSecond("$0.01", max_seconds=TTL - HOLD_MARGIN_SECONDS)).price.metered
    default = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=StubFacilitator(),
        store="memory://",
        public_origin="http://testserver",
    )
    with pytest.raises(ConfigurationError, match=r"credit_ttl_seconds \(3600\)"):
        default.route(PerSecond("$1", per=60, max_seconds=3600))
    default.close()
