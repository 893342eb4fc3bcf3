"""Benchmark: paid requests per second, x402gate's FastAPI adapter vs the official x402 middleware.

Run with ``.venv/bin/python bench/throughput.py [--n 200] [--rounds 3] [--concurrency 8,1]``;
add ``--profile`` for a per-phase breakdown of where the server's time goes (and a py-spy CPU
profile when ``py-spy`` is on ``PATH`` or ``$PY_SPY`` names it). Loopback only, bounded
(``--max-seconds``), and everything it starts is stopped by PID.

Set-up, identical for both sides except for the payment layer under test:

* anvil (:class:`x402gate.testing.LocalChain`) on 127.0.0.1 with the project's test USDC;
* a funded payer, a facilitator key and a payee per server, so balances can be checked;
* per side one server **process** running uvicorn (1 worker, the same ``uvicorn.Config``, access
  log off) with the same FastAPI app: ``GET /paid`` returns ``{"ok": true}`` for $0.001;
* **official**: ``x402.http.middleware.fastapi.PaymentMiddlewareASGI`` with an
  ``x402ResourceServer`` over the in-process ``x402Facilitator`` (``register_exact_evm_facilitator``
  + ``FacilitatorWeb3Signer``), an ``ExactEvmServerScheme`` whose money parser maps dollars to
  the test token;
* **x402gate**: ``x402gate.fastapi.install(app, gate)`` + ``Depends(require_payment("$0.001"))``
  with ``LocalFacilitator`` (the same SDK facilitator scheme and signer class; x402gate gives
  the signer its keep-alive JSON-RPC transport, overlapping settlements and fast receipt
  polling, see :mod:`x402gate._rpc`) and the default store
  (SQLite, WAL, ``synchronous=full``) in a temporary directory. ``verify_with_facilitator`` keeps
  its default (True), so both sides ask the facilitator to verify (simulation included) and then
  settle; both facilitators run with ``simulate_in_settle=True`` and a 30 s confirmation timeout.

The client (this process) reads each server's 402 challenge, pre-signs every payment for a round
with :func:`x402gate.testing.payments.sign_exact_payment` (eth-account, independent of both
sides), and sends them with ``httpx.AsyncClient`` from a fixed number of concurrent workers. A
request counts as paid when it answers 200 with a ``PAYMENT-RESPONSE`` that reports success.
Every batch (one server, one concurrency, one round) gets a fresh anvil and a fresh server
process: anvil makes receipts available later and later as its chain grows (a few ms after
``eth_sendRawTransaction`` returns; past ~1,000 transactions web3's first receipt poll, which
the official side uses, misses more often than not and then sleeps 100 ms), so a shared chain
would penalise whichever server runs last. Rounds rotate the order of the servers; each batch
starts with a warm-up of ``2 x concurrency`` paid requests; rps is paid requests over wall time,
the table gives the median over rounds, and the CPU time per paid request of the server, anvil
and the client (from ``/proc``), which moves much less than rps when the machine is busy. After each
batch every payment is checked on chain: each paid request's authorization is used
(``authorizationState``) and every refused one is not, and the payer's and payee's balances
moved by exactly ``paid x price``.

``--stores memory,sqlite,redis,postgres`` (or ``all``) runs one x402gate server per store, named
``x402gate`` (SQLite, the default store) and ``x402gate@<store>``; ``--no-official`` leaves the
official middleware out. Redis (:class:`x402gate.testing.redis_server.RedisServer`, loopback
TCP) and PostgreSQL (:class:`x402gate.testing.postgres_server.PostgresServer`, unix socket,
``fsync=off``, a fresh schema per server) run once for the whole run; the ``store CPU`` column is
their CPU time per paid request (PostgreSQL's: the postmaster and every backend).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    cpu_seconds,
    git_state,
    header,
    median,
    percentile,
    print_table,
    serve_uvicorn,
    stop_child,
)

PRICE = "$0.001"
AMOUNT = 1000  # atomic units of a 6-decimal token
PATH = "/paid"
SIDES = ("official", "x402gate")
STORES = ("memory", "sqlite", "redis", "postgres")
"""What ``--stores`` takes: ``sqlite`` is the ``x402gate`` server, others ``x402gate@<store>``."""
FUNDS = 10**12


# ======================================================================== server (child process)


def _token_asset(cfg: dict[str, Any]) -> Any:
    from x402gate.assets import Asset

    return Asset(**cfg["token"])


def build_official_app(cfg: dict[str, Any]) -> Any:
    """FastAPI + the official middleware over the in-process SDK facilitator."""
    from decimal import Decimal

    from fastapi import FastAPI
    from x402 import x402Facilitator, x402ResourceServer
    from x402.http import PaymentOption, RouteConfig
    from x402.http.middleware.fastapi import PaymentMiddlewareASGI
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator
    from x402.schemas import AssetAmount

    asset = _token_asset(cfg)
    signer = FacilitatorWeb3Signer(
        cfg["facilitator_key"], cfg["rpc_url"], confirmation_timeout_seconds=30
    )
    facilitator = x402Facilitator()
    register_exact_evm_facilitator(
        facilitator, signer, networks=asset.network, simulate_in_settle=True
    )
    scheme = ExactEvmServerScheme()  # type: ignore[no-untyped-call]  # untyped in the SDK

    def dollars_to_token(amount: str | int | float, network: str) -> AssetAmount | None:
        if network != asset.network:
            return None
        atomic = Decimal(str(amount)) * 10**asset.decimals
        return AssetAmount(amount=str(int(atomic)), asset=asset.address, extra=asset.extra)

    scheme.register_money_parser(dollars_to_token)
    server = x402ResourceServer(facilitator)
    # The SDK types its own scheme's payment_flows as a plain dict, not its protocol's mapping.
    server.register(asset.network, scheme)  # type: ignore[arg-type]

    app = FastAPI()

    @app.get(PATH)
    async def paid() -> dict[str, bool]:
        return {"ok": True}

    routes = {
        f"GET {PATH}": RouteConfig(
            accepts=PaymentOption(
                scheme="exact", pay_to=cfg["pay_to"], price=PRICE, network=asset.network
            )
        )
    }
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    app.state.bench_facilitator = facilitator
    return app


def build_x402gate_app(cfg: dict[str, Any]) -> Any:
    """The same FastAPI app, paid through x402gate's adapter and LocalFacilitator."""
    from fastapi import Depends, FastAPI

    from x402gate import LocalFacilitator, PaymentGate
    from x402gate.fastapi import install, require_payment

    asset = _token_asset(cfg)
    what_if = set(cfg.get("what_if") or ())
    facilitator = LocalFacilitator(
        cfg["rpc_url"], cfg["facilitator_key"], networks=asset.network, confirmation_timeout=30
    )
    _apply_what_if(facilitator, what_if)
    gate = PaymentGate(
        pay_to=cfg["pay_to"],
        assets=asset,
        facilitator=facilitator,
        store="memory://" if "memory_store" in what_if else cfg["store_url"],
        verify_with_facilitator="skip_facilitator_verify" not in what_if,
    )
    app = FastAPI()
    install(app, gate)

    # The dependency form that needs no parameter (this module's annotations are strings, which
    # FastAPI could not resolve for names imported inside a function); same dependency either way.
    @app.get(PATH, dependencies=[Depends(require_payment(PRICE))])
    async def paid() -> dict[str, bool]:
        return {"ok": True}

    app.state.bench_gate = gate
    return app


WHAT_IF = {
    "memory_store": "store memory:// instead of the SQLite default",
    "skip_facilitator_verify": "verify_with_facilitator=False (local verify + claim, then "
    "settle, which still simulates first)",
    "no_resimulate": "LocalFacilitator's SDK fallback with simulate_in_settle=False (the direct "
    "path, which most payments take, is not affected)",
}
"""Bench-only experiments on the x402gate side (``--what-if``): monkeypatches in the server
process that estimate what a proposed change to gate/ or facilitators.py would buy. They are
not x402gate's behaviour."""


def _apply_what_if(facilitator: Any, what_if: set[str]) -> None:
    unknown = what_if - set(WHAT_IF)
    if unknown:
        raise SystemExit(f"unknown --what-if variant(s): {', '.join(sorted(unknown))}")
    if "no_resimulate" in what_if:
        from x402 import x402FacilitatorSync
        from x402.mechanisms.evm.exact import register_exact_evm_facilitator

        sdk = x402FacilitatorSync()
        register_exact_evm_facilitator(
            sdk, facilitator._signer, networks=facilitator.networks, simulate_in_settle=False
        )
        facilitator._facilitator = sdk


class _Phases:
    """Wall time spent in named calls (count, total ns), for ``--profile``."""

    def __init__(self) -> None:
        self.data: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.lock = threading.Lock()

    def add(self, name: str, ns: int) -> None:
        with self.lock:  # called from worker threads too
            entry = self.data[name]
            entry[0] += 1
            entry[1] += ns

    def wrap_async(self, owner: Any, attr: str, name: str) -> None:
        inner = getattr(owner, attr)
        clock = time.perf_counter_ns

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.add(name, clock() - start)

        setattr(owner, attr, timed)

    def wrap_sync(self, owner: Any, attr: str, name: str) -> None:
        inner = getattr(owner, attr)
        clock = time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(name, clock() - start)

        setattr(owner, attr, timed)


def _instrument(app: Any, side: str, phases: _Phases) -> Any:
    """Time the request as a whole (outermost ASGI layer) and the phases inside it."""
    clock = time.perf_counter_ns
    if side == "official":
        from x402.http.x402_http_server import x402HTTPResourceServer

        phases.wrap_async(x402HTTPResourceServer, "process_http_request", "process_http_request")
        phases.wrap_async(x402HTTPResourceServer, "process_settlement", "process_settlement")
        facilitator = app.state.bench_facilitator
        # async def, but the SDK's web3 calls inside block the event loop.
        phases.wrap_async(facilitator, "verify", "  facilitator.verify (blocks the loop)")
        phases.wrap_async(facilitator, "settle", "  facilitator.settle (blocks the loop)")
    else:
        import x402gate.verify

        gate = app.state.bench_gate
        phases.wrap_async(gate, "begin", "gate.begin")
        phases.wrap_async(gate, "finish", "gate.finish")
        phases.wrap_async(gate, "requirements", "  gate.requirements")
        phases.wrap_sync(x402gate.verify, "verify_exact", "  verify_exact (local)")
        phases.wrap_sync(gate.store, "claim", "  store.claim (in thread)")
        phases.wrap_sync(gate.store, "mark_used", "  store.mark_used (in thread)")
        phases.wrap_async(gate, "_store_call", "  gate._store_call (loop view)")
        facilitator = gate.facilitator
        phases.wrap_async(facilitator, "verify", "  facilitator.verify (loop view)")
        phases.wrap_async(facilitator, "settle", "  facilitator.settle (loop view)")
        phases.wrap_sync(facilitator, "_verify", "    verify (in a chain thread)")
        phases.wrap_sync(facilitator, "_settle", "    settle up to the broadcast (chain thread)")
        direct = facilitator._direct
        phases.wrap_sync(direct, "transfer", "      checks + calldata (direct path)")
        phases.wrap_sync(direct, "send", "      nonce + sign + broadcast (direct path)")
        phases.wrap_async(direct, "confirmed", "    receipt wait + check (on the loop)")
        sdk = facilitator._facilitator
        phases.wrap_sync(sdk, "verify", "      SDK verify (fallback; 0 when all went direct)")
        phases.wrap_sync(sdk, "settle", "      SDK settle (fallback; 0 when all went direct)")

    # Each side's JSON-RPC round trips, by method: web3's HTTPProvider (official) or
    # x402gate's keep-alive transport.
    from web3.providers.rpc import HTTPProvider

    from x402gate._rpc import JsonRpcTransport

    def timed(call: Any) -> Any:
        def timed_call(self: Any, method: Any, arg: Any) -> Any:
            start = clock()
            try:
                return call(self, method, arg)
            finally:
                phases.add(f"  rpc {method} (HTTP round trip)", clock() - start)

        return timed_call

    HTTPProvider._make_request = timed(HTTPProvider._make_request)  # type: ignore[method-assign]

    # x402gate's transport: every post (web3's calls, its own, JSON-RPC batches) by method.
    exchange = JsonRpcTransport._exchange

    def timed_exchange(self: Any, body: bytes, sending: bool) -> Any:
        start = clock()
        try:
            return exchange(self, body, sending)
        finally:
            calls = json.loads(body)
            if isinstance(calls, list):
                names = sorted({c["method"] for c in calls})
                label = f"batch of {'+'.join(names)}" if len(names) < 3 else "batch"
            else:
                label = calls["method"]
            thread = threading.current_thread().name
            where = " (receipt loop)" if thread == "x402gate-receipts" else ""
            phases.add(f"  rpc {label}{where} (HTTP round trip)", clock() - start)

    JsonRpcTransport._exchange = timed_exchange  # type: ignore[method-assign]

    async def timing(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = clock()
        try:
            await app(scope, receive, send)
        finally:
            phases.add("request (outermost ASGI)", clock() - start)

    return timing


def serve(cfg: dict[str, Any]) -> None:
    """Child process: build the app, serve it on a free loopback port, print ``PORT <n>``."""
    side = cfg["side"]
    app = build_official_app(cfg) if side == "official" else build_x402gate_app(cfg)
    phases = _Phases()
    if cfg.get("phases_path"):
        app = _instrument(app, side, phases)
    try:
        serve_uvicorn(app)
    finally:
        if cfg.get("phases_path"):
            Path(cfg["phases_path"]).write_text(json.dumps(phases.data))


# ======================================================================== RPC delay (child process)


def delay_proxy(target_port: int, delay_ms: float) -> None:
    """Child process: a loopback TCP proxy to anvil that holds each request chunk ``delay_ms``.

    Models a remote JSON-RPC provider (every RPC round trip takes ``delay_ms`` longer) while
    the chain stays the same local anvil. Prints ``PORT <n>``; stops on SIGINT/SIGTERM.
    """
    delay = delay_ms / 1000

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
            writer.close()

        forwarder = asyncio.create_task(forward())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + hold, chunk))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await forwarder

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, 0.0))

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(run())


@contextlib.contextmanager
def rpc_delay(chain: Any, delay_ms: float, tmp: Path) -> Iterator[str]:
    """The RPC URL servers should use: anvil itself, or a delaying proxy in front of it."""
    if delay_ms <= 0:
        yield chain.rpc_url
        return
    log = (tmp / "rpc-proxy.log").open("w")
    command = [sys.executable, __file__, "--rpc-proxy", f"{chain.port}:{delay_ms}"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"RPC delay proxy did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


# ======================================================================== client (this process)


@dataclass
class Batch:
    side: str
    concurrency: int
    seconds: float
    statuses: list[int]
    paid: list[bool]
    latencies: list[float]
    codes: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process, timed part

    @property
    def ok(self) -> int:
        return sum(self.paid)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds


@dataclass
class Side:
    name: str
    payer: Any
    facilitator: Any
    pay_to: str
    process: subprocess.Popen[str] | None = None
    base_url: str = ""
    requirements: Any = None
    log_path: Path | None = None
    # every payment sent: (nonce, paid?)
    sent: list[tuple[str, bool]] = field(default_factory=list)
    store_pid: int | None = None  # the Redis or PostgreSQL server's, for its CPU time


def _b64json(value: str) -> Any:
    return json.loads(base64.b64decode(value))


def _is_paid(response: Any) -> bool:
    if response.status_code != 200 or "payment-response" not in response.headers:
        return False
    receipt = _b64json(response.headers["payment-response"])
    return bool(receipt.get("success")) and bool(receipt.get("transaction"))


def _error_code(response: Any) -> str:
    for name in ("payment-required", "payment-response"):
        if name in response.headers:
            with contextlib.suppress(Exception):
                decoded = _b64json(response.headers[name])
                return str(decoded.get("error") or decoded.get("errorReason") or "?")
    return f"http_{response.status_code}"


async def send_payments(
    base_url: str,
    headers: list[str],
    concurrency: int,
    warm_up: list[str],
    timeout: float,
    after_warm_up: Callable[[], None] | None = None,
    cpu_pids: dict[str, int] | None = None,
) -> tuple[Batch, list[bool], list[bool]]:
    """Send warm-up payments, then the timed ones, each from ``concurrency`` workers."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def run(values: list[str]) -> tuple[list[tuple[int, bool, float, str]], float]:
            results: list[tuple[int, bool, float, str]] = [(0, False, 0.0, "")] * len(values)
            queue = iter(enumerate(values))
            clock = time.perf_counter

            async def worker() -> None:
                for index, value in queue:
                    start = clock()
                    try:
                        response = await client.get(PATH, headers={"PAYMENT-SIGNATURE": value})
                    except httpx.HTTPError as exc:
                        results[index] = (0, False, clock() - start, type(exc).__name__)
                        continue
                    paid = _is_paid(response)
                    code = "" if paid else _error_code(response)
                    results[index] = (response.status_code, paid, clock() - start, code)

            started = clock()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return results, clock() - started

        warm, _ = await run(warm_up)
        if after_warm_up is not None:
            after_warm_up()
        pids = dict(cpu_pids or {}, client=os.getpid())
        cpu_before = {name: _cpu_of(name, pid) for name, pid in pids.items()}
        timed, seconds = await run(headers)
        cpu = {name: _cpu_of(name, pid) - cpu_before[name] for name, pid in pids.items()}
    codes: dict[str, int] = defaultdict(int)
    for _, paid, _, code in timed:
        if not paid:
            codes[code] += 1
    batch = Batch(
        side="",
        concurrency=concurrency,
        seconds=seconds,
        statuses=[r[0] for r in timed],
        paid=[r[1] for r in timed],
        latencies=[r[2] for r in timed],
        codes=dict(codes),
        cpu=cpu,
    )
    return batch, [r[1] for r in warm], batch.paid


def _cpu_of(name: str, pid: int) -> float:
    """CPU seconds of ``pid``; for the ``store`` server, of it and all its descendants (a
    PostgreSQL backend per connection is a child of the postmaster)."""
    if name != "store":
        return cpu_seconds(pid)
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(current)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as children:
                    pending += [int(child) for child in children.read().split()]
    return total


def store_url(name: str, args: Any, tmp: Path) -> tuple[str, int | None]:
    """The store URL of server ``name`` and the PID of the store's server process, if any."""
    store = name.split("+")[0].partition("@")[2] or "sqlite"
    if store == "memory":
        return "memory://", None
    if store == "redis":
        return args.redis_server.url, args.redis_server.pid
    if store == "postgres":
        return args.postgres_server.fresh_url(), args.postgres_server.pid
    return f"sqlite:///{tmp / (name + '-replay.db')}", None


def sign_many(side: Side, count: int) -> tuple[list[str], list[str]]:
    from x402gate.testing.payments import encode_payment, sign_exact_payment

    headers, nonces = [], []
    for _ in range(count):
        payload = sign_exact_payment(side.payer, side.requirements)
        headers.append(encode_payment(payload))
        nonces.append(payload.payload["authorization"]["nonce"])
    return headers, nonces


def fetch_requirements(base_url: str) -> Any:
    import httpx
    from x402.schemas import PaymentRequired

    response = httpx.get(base_url + PATH, timeout=30)
    if response.status_code != 402:
        raise SystemExit(f"{base_url}{PATH} answered {response.status_code}, expected 402")
    required = PaymentRequired.model_validate(_b64json(response.headers["payment-required"]))
    return required.accepts[0]


def start_server(side: Side, cfg: dict[str, Any], tmp: Path) -> None:
    """Start one server child (returns at once; :func:`wait_for_server` reads its port)."""
    side.log_path = tmp / f"{side.name}.log"
    with side.log_path.open("w") as log:
        side.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )


def wait_for_server(side: Side, timeout: float = 90) -> None:
    process = side.process
    assert process is not None and process.stdout is not None and side.log_path is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("PORT "):
            side.base_url = f"http://127.0.0.1:{int(line.split()[1])}"
            return
    raise SystemExit(f"{side.name} server did not start:\n{side.log_path.read_text()}")


def stop_server(side: Side) -> None:
    """SIGINT to our own child: uvicorn stops gracefully (and writes the phase timings)."""
    process, side.process = side.process, None
    if process is not None:
        stop_child(process)


@dataclass
class Block:
    """One fresh chain with one server per side; filled in by :func:`chain_block`."""

    chain: Any = None
    token: Any = None
    sides: dict[str, Side] = field(default_factory=dict)
    check: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # paid, sent, ok


@contextlib.contextmanager
def chain_block(names: list[str], args: Any, tmp: Path, phases: bool = False) -> Iterator[Block]:
    """A fresh anvil + test USDC, a funded payer/facilitator/payee and a server per name.

    Why fresh: anvil (1.7.1, automine) makes a receipt available a few ms after
    ``eth_sendRawTransaction`` returns, later and later as the chain grows, and web3's receipt
    wait (the official side's) polls every 100 ms: on a long-lived chain its settlements slow
    down as a run goes on.
    On exit the servers stop and every payment sent is checked on chain (``block.check``).
    """
    from eth_account import Account

    from x402gate.testing import LocalChain

    block = Block()
    with LocalChain() as chain:
        block.chain = chain
        block.token = token = chain.deploy_token()
        for name in names:
            block.sides[name] = Side(
                name,
                payer=chain.new_account(token=token, token_amount=FUNDS),
                facilitator=chain.new_account(),
                pay_to=Account.create().address,
            )
        balances = {
            s.name: (token.balance_of(s.payer.address), token.balance_of(s.pay_to))
            for s in block.sides.values()
        }
        with contextlib.ExitStack() as stack:
            rpc_url = stack.enter_context(rpc_delay(chain, args.rpc_delay_ms, tmp))
            for side in block.sides.values():  # start all, then wait: imports overlap
                cfg = server_config(side, rpc_url, token, tmp, phases)
                cfg["store_url"], side.store_pid = store_url(side.name, args, tmp)
                if "+" in side.name:
                    cfg["side"], *cfg["what_if"] = side.name.split("+")
                stack.callback(stop_server, side)
                start_server(side, cfg, tmp)
            for side in block.sides.values():
                wait_for_server(side)
                side.requirements = fetch_requirements(side.base_url)
            terms = {
                (r.scheme, r.network, r.asset, r.amount, r.max_timeout_seconds, str(r.extra))
                for r in (s.requirements for s in block.sides.values())
            }
            if len(terms) != 1:
                raise SystemExit(f"the servers ask different terms: {terms}")
            yield block
        block.check = check_on_chain(block.sides, token, balances)


def server_config(side: Side, rpc_url: str, token: Any, tmp: Path, phases: bool) -> dict[str, Any]:
    asset = token.asset
    return {
        "side": side.name,
        "rpc_url": rpc_url,
        "network": asset.network,
        "token": {
            "network": asset.network,
            "address": asset.address,
            "name": asset.name,
            "version": asset.version,
            "decimals": asset.decimals,
            "symbol": asset.symbol,
        },
        "pay_to": side.pay_to,
        "facilitator_key": side.facilitator.key.hex(),
        "store_url": f"sqlite:///{tmp / (side.name + '-replay.db')}",
        "phases_path": str(tmp / f"{side.name}-phases.json") if phases else None,
    }


def check_on_chain(
    sides: dict[str, Side], token: Any, balances: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int, bool]]:
    """Per side (paid, sent, ok): each paid answer's authorization is used on chain, each
    refused one's is not, and payer and payee balances moved by exactly paid x price."""
    out = {}
    for side in sides.values():
        paid = sum(1 for _, ok in side.sent if ok)
        matches = all(
            token.authorization_state(side.payer.address, nonce) == ok for nonce, ok in side.sent
        )
        payer_before, payee_before = balances[side.name]
        payer_delta = payer_before - token.balance_of(side.payer.address)
        payee_delta = token.balance_of(side.pay_to) - payee_before
        ok = matches and payer_delta == payee_delta == paid * AMOUNT
        out[side.name] = (paid, len(side.sent), ok)
    return out


def report_checks(blocks: list[Block]) -> str:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for block in blocks:
        for name, (paid, sent, ok) in block.check.items():
            entry = totals[name]
            entry[0] += paid
            entry[1] += sent
            entry[2] += not ok
    failed = sum(entry[2] for entry in totals.values())
    lines = [
        f"on-chain check over {len(blocks)} chains: "
        + ("OK" if not failed else f"FAILED on {failed} server-chains")
        + " (every paid answer's authorization used, every refused one unused, payer and "
        "payee balances moved by exactly paid x price)"
    ]
    for name, (paid, sent, bad) in totals.items():
        lines.append(f"  {name}: {paid} paid of {sent} sent{'' if not bad else ', MISMATCH'}")
    return "\n".join(lines)


def find_py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


# Where a GIL-holding sample is spent: the first rule (in this order) matching any frame wins.
CATEGORIES = [
    ("SDK facilitator settle (web3, signing, RPC)", ("_settle_core",)),
    ("SDK facilitator verify (web3, RPC, ecrecover)", ("_verify_core", "ExactEvmScheme._verify")),
    ("x402gate store (SQLite)", ("stores/sqlite/", "stores/memory.py", "stores/redis/")),
    (
        "x402gate facilitator, direct path (checks, calldata, signing, JSON-RPC, receipts)",
        ("x402gate/_direct.py", "x402gate/_tx.py", "x402gate/_rpc.py", "x402gate/facilitators.py"),
    ),
    ("x402gate local verify (EIP-712, ecrecover)", ("x402gate/verify.py",)),
    ("x402gate gate + adapter (rest)", ("x402gate/",)),
    ("official middleware + x402 HTTP server (rest)", ("x402/http/", "x402/server")),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("uvicorn / h11 / httptools (HTTP parsing, writing)", ("uvicorn/", "h11/", "httptools/")),
    ("asyncio + thread-pool plumbing", ("asyncio/", "concurrent/futures", "threading.py")),
]


def summarize_py_spy(path: Path) -> list[str]:
    """Share of the server's GIL-holding samples per category, from a py-spy raw profile."""
    counts: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        for name, patterns in CATEGORIES:
            if any(p in stack for p in patterns):
                counts[name] += count
                break
        else:
            counts["other"] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples holding the GIL (250 Hz), by category:"]
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return lines


def print_phases(text: str, requests: int) -> None:
    data = json.loads(text)
    total = data.get("request (outermost ASGI)", [0, 0])
    print(f"  {'phase':42} {'calls':>6} {'ms/call':>8} {'ms/paid request':>16}")
    for name, (count, ns) in data.items():
        per_call = ns / count / 1e6 if count else 0.0
        print(f"  {name:42} {count:6} {per_call:8.2f} {ns / max(1, requests) / 1e6:16.2f}")
    if total[0]:
        print(f"  (server time per request: {total[1] / total[0] / 1e6:.2f} ms)")


def run_block_batches(
    block: Block, order: list[str], concurrency: int, args: Any
) -> dict[str, Batch]:
    """Each side of the block in ``order``: warm-up, then ``args.n`` timed paid requests."""
    out = {}
    for name in order:
        side = block.sides[name]
        warm_headers, warm_nonces = sign_many(side, 2 * concurrency)
        headers, nonces = sign_many(side, args.n)
        assert side.process is not None
        batch, warm_paid, paid = asyncio.run(
            send_payments(
                side.base_url,
                headers,
                concurrency,
                warm_headers,
                args.timeout,
                cpu_pids={"server": side.process.pid, "anvil": block.chain.pid}
                | ({"store": side.store_pid} if side.store_pid else {}),
            )
        )
        batch.side = name
        side.sent += list(zip(warm_nonces, warm_paid, strict=True))
        side.sent += list(zip(nonces, paid, strict=True))
        out[name] = batch
    return out


def run_rounds(
    names: list[str], levels: list[int], rounds: int, args: Any, tmp: Path, deadline: float
) -> tuple[dict[tuple[str, int], list[Batch]], list[Block], bool]:
    """``rounds`` rounds of every side at every concurrency, each batch on a fresh chain of its
    own, the order of the sides rotating (and reversed every other round)."""
    results: dict[tuple[str, int], list[Batch]] = defaultdict(list)
    blocks: list[Block] = []
    for round_number in range(rounds):
        for concurrency in levels:
            if time.monotonic() > deadline:
                return results, blocks, True
            shift = round_number % len(names)
            order = names[shift:] + names[:shift]
            if round_number % 2:
                order = order[::-1]
            for name in order:  # each server on a chain of its own: same chain age for all
                with chain_block([name], args, tmp) as block:
                    batch = run_block_batches(block, [name], concurrency, args)[name]
                    results[(name, concurrency)].append(batch)
                blocks.append(block)
    return results, blocks, False


_STORE_TEXT = {
    "memory": "memory://",
    "sqlite": "SQLite (WAL, full)",
    "redis": "Redis (loopback TCP)",
    "postgres": "PostgreSQL (unix socket, fsync off)",
}

RATIO_GOAL = 2.0
"""Goal: x402gate's paid requests/s over the official middleware's (docs/performance.md)."""
CPU_GOAL_MS = 6.0
"""Server CPU per paid request of x402gate, in milliseconds."""


def result_rows(
    results: dict[tuple[str, int], list[Batch]], names: list[str], levels: list[int]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for concurrency in levels:
        for name in names:
            batches = results.get((name, concurrency))
            if not batches:
                continue
            rates = [b.rps for b in batches]
            latencies = [x for b in batches for x in b.latencies]
            codes: dict[str, int] = defaultdict(int)
            for b in batches:
                for code, count in b.codes.items():
                    codes[code] += count
            refused = ", ".join(f"{c} {k}" for c, k in sorted(codes.items())) or "-"

            def cpu_ms(process: str, batches: list[Batch] = batches) -> str:
                # CPU time per paid request, median over rounds: robust to a busy machine.
                values = [
                    1000 * b.cpu[process] / b.ok for b in batches if b.ok and process in b.cpu
                ]
                return f"{median(values):.1f}" if values else "-"

            rows.append(
                [
                    name,
                    concurrency,
                    f"{sum(b.ok for b in batches)}/{sum(len(b.paid) for b in batches)}",
                    f"{median(rates):.1f}",
                    f"{min(rates):.1f}-{max(rates):.1f}",
                    f"{1000 * median(latencies):.1f}",
                    f"{1000 * percentile(latencies, 0.9):.1f}",
                    cpu_ms("server"),
                    cpu_ms("anvil"),
                    cpu_ms("store"),
                    cpu_ms("client"),
                    refused,
                ]
            )
    return rows


STORE_GOAL = 0.85
"""A store's paid requests/s at least this share of the memory store's: not the store's limit."""


def print_chain_verdict(results: dict[tuple[str, int], list[Batch]], levels: list[int]) -> None:
    """Is settlement throughput limited by the chain or by the store? Against the memory store
    (no store cost at all: what is left is the chain, the facilitator and the server), each
    shared store's paid requests/s, paired round by round."""
    for concurrency in levels:
        memory = results.get(("x402gate@memory", concurrency))
        if not memory:
            continue
        base = median([b.rps for b in memory])
        chain = median([1000 * b.cpu["anvil"] / b.ok for b in memory if b.ok and "anvil" in b.cpu])
        p50 = 1000 * median([x for b in memory for x in b.latencies])
        print(
            f"chain or store, concurrency {concurrency}: memory store {base:.1f} paid/s, p50 "
            f"{p50:.1f} ms per paid request (anvil CPU {chain:.1f} ms per paid request)"
        )
        for name, label in (
            ("x402gate", "SQLite"),
            ("x402gate@redis", "Redis"),
            ("x402gate@postgres", "PostgreSQL"),
        ):
            batches = results.get((name, concurrency))
            if not batches:
                continue
            paired = [a.rps / b.rps for a, b in zip(batches, memory, strict=False) if b.rps]
            share = median(paired) if paired else 0.0
            verdict = (
                "the chain is the limit, not the store"
                if share >= STORE_GOAL
                else "the server's CPU is the limit, the store's work in it (not the chain)"
            )
            print(
                f"  {label}: {median([b.rps for b in batches]):.1f} paid/s, {share:.2f}x the "
                f"memory store's (paired per round; goal >= {STORE_GOAL:.2f}x): {verdict}"
            )


TABLE = ["server", "conc.", "paid/sent", "paid rps (median)", "rps range", "p50 ms", "p90 ms",
         "server CPU ms/paid", "anvil CPU", "store CPU", "client CPU", "not paid"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=200, help="timed paid requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side and concurrency")
    parser.add_argument("--concurrency", default="8,1", help="comma-separated client concurrency")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop starting rounds")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then one more instrumented round per side: phase timings (+ py-spy if found)",
    )
    parser.add_argument(
        "--profile-dir", help="keep the raw py-spy profiles and phase timings in this directory"
    )
    parser.add_argument(
        "--what-if",
        default="",
        help="then rounds at the first concurrency with bench-only variants of the x402gate "
        f"server, comma-separated, or 'all': {', '.join(WHAT_IF)}",
    )
    parser.add_argument("--what-if-rounds", type=int, default=2)
    parser.add_argument(
        "--rpc-delay-ms",
        type=float,
        default=0.0,
        help="servers reach anvil through a loopback proxy adding this much to every RPC round "
        "trip (models a hosted RPC provider); 0 = direct",
    )
    parser.add_argument(
        "--stores",
        default="sqlite",
        help=f"x402gate servers to run, one per store, comma-separated from {', '.join(STORES)} "
        "or 'all' (sqlite is the server named x402gate)",
    )
    parser.add_argument(
        "--no-official", action="store_true", help="leave out the official x402 middleware"
    )
    parser.add_argument("--rpc-proxy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    if args.rpc_proxy:
        port, _, delay = args.rpc_proxy.partition(":")
        delay_proxy(int(port), float(delay))
        return

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    variants = list(WHAT_IF) if args.what_if == "all" else [
        v for v in args.what_if.split(",") if v
    ]  # fmt: skip
    if {part for v in variants for part in v.split("+")} - set(WHAT_IF):
        raise SystemExit(f"unknown --what-if variant(s); known: {', '.join(WHAT_IF)}")
    stores = list(STORES) if args.stores == "all" else [
        s.strip() for s in args.stores.split(",") if s.strip()
    ]  # fmt: skip
    if not stores or set(stores) - set(STORES):
        raise SystemExit(f"--stores takes {', '.join(STORES)} or all")
    sides = [] if args.no_official else ["official"]
    sides += ["x402gate" if s == "sqlite" else f"x402gate@{s}" for s in stores]
    started = time.monotonic()
    deadline = started + args.max_seconds
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp_name,
        contextlib.ExitStack() as servers,
    ):
        tmp = Path(tmp_name)
        args.redis_server = args.postgres_server = None
        if "redis" in stores:
            from x402gate.testing.redis_server import RedisServer

            args.redis_server = RedisServer()
            servers.callback(args.redis_server.stop)
            args.redis_server.start()
        if "postgres" in stores:
            from x402gate.testing.postgres_server import PostgresServer

            args.postgres_server = PostgresServer()
            servers.callback(args.postgres_server.stop)
            args.postgres_server.start()
        results, blocks, stopped_early = run_rounds(sides, levels, args.rounds, args, tmp, deadline)
        load_after = os.getloadavg()
        what_if_names = [*SIDES, *(f"x402gate+{v}" for v in variants)]
        what_if_results: dict[tuple[str, int], list[Batch]] = {}
        if variants and not stopped_early:
            what_if_results, more, stopped_early = run_rounds(
                what_if_names, levels[:1], args.what_if_rounds, args, tmp, deadline
            )
            blocks += more
        profile_output: list[Callable[[], None]] = []
        if args.profile:
            profile_output = run_profile(tmp, levels[0], args)
        anvil = blocks[0].chain.anvil if blocks else "?"
    elapsed = time.monotonic() - started

    print(
        header(
            "x402gate paid-throughput benchmark (FastAPI, uvicorn, anvil)",
            ["x402", "fastapi", "starlette", "uvicorn", "httpx", "web3", "coincurve"],
            [
                git_state(),
                f"anvil {anvil}, a fresh chain and server process for every batch; 1 uvicorn "
                f"worker per server (uvicorn's default stack); price {PRICE} = {AMOUNT} atomic; "
                "x402gate stores "
                + ", ".join(_STORE_TEXT[s] for s in stores)
                + "; "
                + (
                    f"RPC through a loopback proxy adding {args.rpc_delay_ms:g} ms per round trip"
                    if args.rpc_delay_ms > 0
                    else "RPC straight to anvil"
                ),
                f"{args.rounds} rounds x {args.n} paid requests per server and concurrency "
                f"(+ 2 x concurrency warm-up each), order rotating; {elapsed:.0f} s; "
                f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
                f"after the main rounds {' '.join(f'{x:.2f}' for x in load_after)}"
                + ("; STOPPED EARLY (--max-seconds)" if stopped_early else ""),
            ],
        )
    )
    print_table(TABLE, result_rows(results, sides, levels))
    print()
    for concurrency in levels:
        ours = results.get(("x402gate", concurrency))
        theirs = results.get(("official", concurrency))
        if ours and theirs:
            ratio = median([b.rps for b in ours]) / median([b.rps for b in theirs])
            paired = [a.rps / b.rps for a, b in zip(ours, theirs, strict=False) if b.rps]
            cpu = median([1000 * b.cpu["server"] / b.ok for b in ours if b.ok and b.cpu])
            goals = f"goal >= {RATIO_GOAL:.2f}x: {'met' if ratio >= RATIO_GOAL else 'NOT met'}"
            print(
                f"x402gate/official at concurrency {concurrency}: {ratio:.2f}x "
                f"(per-round ratios {', '.join(f'{r:.2f}' for r in paired)}; {goals}); "
                f"x402gate server CPU {cpu:.1f} ms per paid request (goal <= {CPU_GOAL_MS:g} ms: "
                f"{'met' if cpu <= CPU_GOAL_MS else 'NOT met'})"
            )
    print_chain_verdict(results, levels)
    if what_if_results:
        print(
            f"\nwhat-if (bench-only monkeypatches of the x402gate server, NOT shipped "
            f"behaviour), concurrency {levels[0]}, {args.what_if_rounds} rounds, each batch on "
            f"a fresh chain:"
        )
        for variant in variants:
            described = "; ".join(WHAT_IF[part] for part in variant.split("+"))
            print(f"  x402gate+{variant}: {described}")
        base = median([b.rps for b in what_if_results[("official", levels[0])]])
        rows = result_rows(what_if_results, what_if_names, levels[:1])
        for row in rows:
            rates = [b.rps for b in what_if_results[(str(row[0]), levels[0])]]
            row.append(f"{median(rates) / base:.2f}x")
        print_table([*TABLE, "vs official"], rows)
    print(report_checks(blocks))
    for show in profile_output:
        show()


def run_profile(tmp: Path, concurrency: int, args: Any) -> list[Callable[[], None]]:
    """One instrumented round per server, each on a fresh chain; returns printers.

    The server times its phases itself; py-spy, when found, samples the server (GIL-holding
    samples, all threads) from the end of the warm-up to the end of the round, attached by PID.
    Payments here are checked on chain like the others but not counted in the report.
    """
    py_spy = find_py_spy()
    printers: list[Callable[[], None]] = []
    for name in SIDES:
        spy_path = tmp / f"{name}-py-spy.txt"
        phases_path = tmp / f"{name}-phases.json"
        spies: list[subprocess.Popen[bytes]] = []  # py-spy, when found
        with chain_block([name], args, tmp, phases=True) as block:
            side = block.sides[name]
            assert side.process is not None

            def attach(
                pid: int = side.process.pid,
                spy_path: Path = spy_path,
                spies: list[subprocess.Popen[bytes]] = spies,
            ) -> None:
                if py_spy:
                    command = [
                        py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                        "--gil", "--nonblocking", "--output", str(spy_path),
                    ]  # fmt: skip
                    spies.append(
                        subprocess.Popen(
                            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                        )
                    )
                    time.sleep(0.5)  # let it attach

            warm_headers, warm_nonces = sign_many(side, 2 * concurrency)
            headers, nonces = sign_many(side, args.n)
            try:
                batch, warm_paid, paid = asyncio.run(
                    send_payments(
                        side.base_url, headers, concurrency, warm_headers, args.timeout, attach
                    )
                )
            finally:
                for spy in spies:  # stop py-spy (by its PID): it writes the profile on SIGINT
                    spy.send_signal(signal.SIGINT)
                    try:
                        spy.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        spy.wait()
            side.sent += list(zip(warm_nonces, warm_paid, strict=True))
            side.sent += list(zip(nonces, paid, strict=True))
        if not all(ok for _, _, ok in block.check.values()):
            raise SystemExit(f"profile round of {name}: on-chain check FAILED")
        requests = len(headers) + len(warm_headers)
        if args.profile_dir:
            keep = Path(args.profile_dir)
            keep.mkdir(parents=True, exist_ok=True)
            for path in (spy_path, phases_path):
                if path.exists():
                    shutil.copy(path, keep / path.name)
        spy_lines = summarize_py_spy(spy_path) if spy_path.exists() else []
        phases = phases_path.read_text() if phases_path.exists() else ""

        def show(
            name: str = name,
            batch: Batch = batch,
            phases: str = phases,
            requests: int = requests,
            spy_lines: list[str] = spy_lines,
        ) -> None:
            print(
                f"\nprofile, {name}, concurrency {batch.concurrency}, fresh chain: "
                f"{batch.ok}/{len(batch.paid)} paid, {batch.rps:.1f} rps with instrumentation on"
            )
            if phases:
                print_phases(phases, requests)
            if spy_lines:
                print(f"  py-spy ({py_spy}) on the server during the timed part:")
                print("\n".join(spy_lines))

        printers.append(show)
    return printers


if __name__ == "__main__":
    main()
