"""The charge of a request served from credit is committed *after* its answer went out.

Real stores (a SQLite file with the default ``synchronous=full``, memory, a real redis-server),
the real ASGI middleware and the real gate; the only thing added is a delay or a failure in the
store's ``credit_commit``, to open the window between "the client has its answer" and "the
ledger has the charge" wide enough to race into it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from x402.schemas import SupportedKind, SupportedResponse

from x402gate import PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.assets import Asset
from x402gate.credit import SESSION_HEADER
from x402gate.errors import StoreError
from x402gate.metering import PerSecond, PerToken, TokenPrice
from x402gate.stores import open_store
from x402gate.stores.base import credit_account
from x402gate.stores.sqlite import SQLiteStore

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address
ORIGIN = "https://api.test"


class StubFacilitator:
    """Only start-up asks it anything: requests served from credit never pay."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment expected")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment expected")


PAYER = Account.create().address
ACCOUNT = credit_account(ASSET.network, ASSET.address, PAYER)
# $1 per 1k tokens; at most 100 output tokens: a quote of $0.10 (100,000 units of USDC).
PRICES = TokenPrice(input="$1", output="$1", per=1_000)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


def sse(prompt: int, completion: int) -> list[bytes]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode(),
        b"data: [DONE]\n\n",
    ]


def build(gate: PaymentGate) -> PaymentMiddleware:
    async def stream(request: Any) -> StreamingResponse:
        async def events() -> Any:
            for chunk in sse(0, 1):
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    async def small(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/chat", stream), Route("/work", small)])
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /chat": gate.route(PerToken(PRICES, max_output_tokens=100)),
            "GET /work": gate.route(PerSecond("$1", max_seconds=1)),
        },
    )


@pytest.fixture(params=["sqlite", "memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"  # the default: synchronous=full
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def gate(store_url: str) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=StubFacilitator(),
        store=open_store(store_url),
        secret=b"s" * 32,
        public_origin=ORIGIN,
        clock=Clock(),
    )
    yield g
    g.close()


def delayed(fn: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return slow


async def call(
    app: Any,
    path: str,
    token: str,
    on_last: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "https",
        "http_version": "1.1",
        "server": ("api.test", 443),
        "headers": [(b"host", b"api.test"), (SESSION_HEADER.lower().encode(), token.encode())],
    }
    status = 0
    body: list[bytes] = []

    requested = False
    complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # As uvicorn does: once the answer is complete, the request is over. Starlette's
        # streaming response then cancels whatever of the app still runs.
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                complete.set()
                if on_last is not None:
                    on_last()

    await app(scope, receive, send)
    return status, b"".join(body)


async def quote_of(gate: PaymentGate, path: str) -> int:
    from x402gate.request import RequestInfo

    route = build(gate).routes.match("GET", path)
    assert route is not None
    (req,) = await gate.requirements(route, RequestInfo("GET", path, url=f"https://api.test{path}"))
    return int(req.amount)


async def test_the_next_request_right_after_the_answer_sees_the_committed_balance(
    gate: PaymentGate,
) -> None:
    app = build(gate)
    quote = await quote_of(gate, "/chat")
    charge = 1_000  # one output token at $1 per 1k tokens: $0.001 in 6-decimal USDC
    # Enough for one quote plus a little: a second reservation fits only once the first
    # request's unused quote is back, i.e. only after its commit.
    funds = 2 * quote - 1
    gate.store.credit_topup(ACCOUNT, funds, "ref-1", gate.clock.now())
    gate.store.credit_commit = delayed(gate.store.credit_commit, 1.5)  # type: ignore[method-assign]
    token = gate.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, gate.clock.now(), origin=ORIGIN
    )

    follow_ups: list[asyncio.Task[Any]] = []
    answered_at: list[float] = []

    def next_request_now() -> None:
        # The client has the whole answer; the commit has not even started.
        answered_at.append(time.monotonic())
        follow_ups.append(asyncio.ensure_future(call(app, "/chat", token)))
        follow_ups.append(asyncio.ensure_future(gate.credit_status({SESSION_HEADER: token})))

    started = time.monotonic()
    status, body = await call(app, "/chat", token, on_last=next_request_now)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert answered_at[0] - started < 1.0  # the answer did not wait for the slow commit
    (second_status, _), (code, document) = await asyncio.gather(*follow_ups)
    assert code == 200
    # After the first charge — and possibly with the second request's hold already taken,
    # or the second already charged — never the first request's stale hold (funds - quote).
    seen = (int(document["available"]), int(document["reserved"]))
    assert seen in {
        (funds - charge, 0),
        (funds - charge - quote, quote),
        (funds - 2 * charge, 0),
    }
    assert second_status == 200  # reserved from the balance *after* the first charge
    # The second answer is out too, its commit may still run: the gate's balance waits for it.
    assert await gate.balance(PAYER) == funds - 2 * charge
    balance = gate.store.credit_balance(ACCOUNT, gate.clock.now())
    assert (balance.available, balance.reserved) == (funds - 2 * charge, 0)
    assert (balance.topped_up, balance.charged) == (funds, 2 * charge)
    assert not gate._pending_commits


async def test_a_commit_the_store_refuses_is_retried_then_owed_until_the_store_is_back(
    gate: PaymentGate, caplog: pytest.LogCaptureFixture
) -> None:
    gate.store_retry_seconds = 0.3  # the request's own retries, kept short here
    app = build(gate)
    quote = await quote_of(gate, "/chat")
    funds = 10 * quote
    gate.store.credit_topup(ACCOUNT, funds, "ref-1", gate.clock.now())
    attempts: list[float] = []

    def broken(reservation_id: str, charge: int, now: float, **kwargs: Any) -> int:
        attempts.append(time.monotonic())
        raise StoreError("ledger down")

    real_commit = gate.store.credit_commit
    gate.store.credit_commit = broken  # type: ignore[method-assign]
    token = gate.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, gate.clock.now(), origin=ORIGIN
    )
    with caplog.at_level(logging.ERROR, logger="x402gate"):
        status, body = await call(app, "/chat", token)
        await gate.balance(PAYER)  # the (failing) commit is over
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")  # the answer went out whole
    assert "credit commit failed" in caplog.text and token not in caplog.text
    # Tried again for the retry budget, then left to the background.
    assert len(attempts) >= 3 and attempts[-1] - attempts[0] < 1.0
    assert [w.split()[:2] for w in gate.holds.owed()] == [["credit", "charge"]]
    assert not gate._pending_commits  # the next request does not wait for a dead commit
    # The reservation still holds the quote: nothing charged yet, nothing given back.
    balance = gate.store.credit_balance(ACCOUNT, gate.clock.now())
    assert (balance.available, balance.reserved, balance.charged) == (funds - quote, quote, 0)
    gate.holds.renew()  # a background pass while the store is still down: still owed
    assert len(gate.holds.owed()) == 1
    # The store is back: the payer is served on, and the owed charge is taken once.
    gate.store.credit_commit = real_commit  # type: ignore[method-assign]
    assert (await call(app, "/chat", token))[0] == 200
    await gate.balance(PAYER)
    gate.holds.renew()
    gate.holds.renew()  # a second pass changes nothing: the commit is idempotent
    assert gate.holds.owed() == []
    gate.clock.t += gate.credit_ttl_seconds + 1  # type: ignore[attr-defined]
    balance = gate.store.credit_balance(ACCOUNT, gate.clock.now())
    assert balance.reserved == 0 and balance.topped_up == funds
    assert balance.available + balance.charged == funds
    assert balance.charged == 2 * 1_000  # both answers (one output token each)


async def test_a_late_commit_never_lets_the_payer_overdraw(gate: PaymentGate) -> None:
    # While a commit is pending, the reservation still holds the whole quote: concurrent
    # requests of the payer cannot spend it, with or without waiting.
    app = build(gate)
    quote = await quote_of(gate, "/chat")
    gate.store.credit_topup(ACCOUNT, 3 * quote, "ref-1", gate.clock.now())
    gate.store.credit_commit = delayed(gate.store.credit_commit, 0.05)  # type: ignore[method-assign]
    token = gate.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, gate.clock.now(), origin=ORIGIN
    )
    results = await asyncio.gather(*(call(app, "/chat", token) for _ in range(8)))
    assert all(status in (200, 402) for status, _ in results)
    await gate.balance(PAYER)  # waits for the commits of the answers already sent
    balance = gate.store.credit_balance(ACCOUNT, gate.clock.now())
    served = sum(status == 200 for status, _ in results)
    assert served >= 3  # three quotes fit at once; the others asked for a payment (402)
    assert balance.reserved == 0 and balance.charged == served * 1_000
    assert balance.available == 3 * quote - served * 1_000 >= 0


async def test_per_second_charges_end_when_the_answer_ends_not_when_the_commit_runs(
    gate: PaymentGate,
) -> None:
    app = build(gate)
    quote = await quote_of(gate, "/work")
    gate.store.credit_topup(ACCOUNT, 10 * quote, "ref-1", gate.clock.now())
    clock: Any = gate.clock

    def later_commit(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            clock.t += 0.5  # half a second passes between the answer and the commit
            return fn(*args, **kwargs)

        return run

    gate.store.credit_commit = later_commit(gate.store.credit_commit)  # type: ignore[method-assign]
    token = gate.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, clock.now(), origin=ORIGIN
    )
    assert (await call(app, "/work", token))[0] == 200
    await gate.balance(PAYER)
    balance = gate.store.credit_balance(ACCOUNT, clock.now())
    assert balance.charged == 0  # zero seconds on the test clock: the wait is not billed


def test_sqlite_spending_writes_skip_the_fsync_and_top_ups_keep_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")  # synchronous=full by default
    assert (store.synchronous, store.ledger_synchronous) == ("full", "normal")
    now = time.time()
    conn = store._connection()
    level = ["full"]  # the connection's level, followed through the statements it runs
    committed: list[str] = []  # the level of each COMMIT

    def trace(sql: str) -> None:
        if sql.startswith("PRAGMA synchronous = "):
            level[0] = sql.rsplit(" ", 1)[1]
        elif sql == "COMMIT":
            committed.append(level[0])

    conn.set_trace_callback(trace)
    store.credit_topup(ACCOUNT, 1_000, "ref", now)
    assert committed == ["full"]  # money in: synced as the store is
    assert store.credit_reserve(ACCOUNT, 100, "r1", int(now) + 60, now)
    assert store.credit_commit("r1", 40, now) == 40
    assert store.credit_reserve(ACCOUNT, 100, "r2", int(now) + 60, now)
    assert store.credit_release("r2", now)
    assert committed == ["full"] + ["normal"] * 4
    store.credit_topup(ACCOUNT, 1, "ref-2", now)
    conn.set_trace_callback(None)
    assert committed[-1] == "full"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    # What a reservation wrote is visible to another connection at once (no overdraw across
    # processes), fsync or not.
    other = sqlite3.connect(store.path)
    row = other.execute(
        "SELECT available, reserved, charged FROM x402gate_credit_account WHERE account = ?",
        (ACCOUNT,),
    ).fetchone()
    assert row == ("961", "0", "40")
    other.close()
    store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///{tmp}/a.db", ("full", "normal")),
        ("sqlite:///{tmp}/a.db?ledger_synchronous=full", ("full", "full")),
        ("sqlite:///{tmp}/a.db?synchronous=normal&ledger_synchronous=full", ("normal", "normal")),
    ],
)
def test_sqlite_ledger_synchronous_option(
    url: str, expected: tuple[str, str], tmp_path: Path
) -> None:
    store = open_store(url.format(tmp=tmp_path))
    assert isinstance(store, SQLiteStore)
    assert (store.synchronous, store.ledger_synchronous) == expected
    if expected[1] == "full":
        seen: list[str] = []
        now = time.time()
        store.credit_topup(ACCOUNT, 1_000, "ref", now)
        store._connection().set_trace_callback(seen.append)
        assert store.credit_reserve(ACCOUNT, 100, "r1", int(now) + 60, now)
        assert store.credit_commit("r1", 10, now) == 10
        assert not [sql for sql in seen if "synchronous" in sql]
    store.close()


def test_sqlite_ledger_synchronous_refuses_other_values(tmp_path: Path) -> None:
    from x402gate.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ledger_synchronous"):
        open_store(f"sqlite:///{tmp_path}/a.db?ledger_synchronous=off")


def test_session_token_caches_change_no_answer() -> None:
    from x402gate.credit import SessionTokens

    tokens = SessionTokens(b"k" * 32, ttl_seconds=60)
    now = 1_700_000_000.0
    token = tokens.issue(PAYER, ASSET.network, ASSET.address, now)
    assert tokens.issue(PAYER, ASSET.network, ASSET.address, now + 0.5) == token  # same second
    assert tokens.issue(PAYER, ASSET.network, ASSET.address, now + 1) != token
    claims = tokens.check(token, now)
    assert claims is not None and claims.payer == PAYER.lower()
    assert tokens.check(token, now + 1) == claims  # from the cache
    # A cached token still expires; a forgery next to it is still refused.
    assert tokens.check(token, now + 60) is None
    head, payload, mac = token.split(".")
    forged = f"{head}.{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    assert tokens.check(forged, now) is None
    other = SessionTokens(b"j" * 32, ttl_seconds=60)
    assert other.check(token, now) is None  # another secret: its own cache
