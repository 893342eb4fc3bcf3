"""Benchmark: server CPU that payment logs, metrics and the journal add to a request, in one run.

Run with ``.venv/bin/python bench/observability.py [--n 150] [--repeats 15]``
(``--paths exact,credit,channel``, ``--stores memory,sqlite``). No chain, no network: a
facilitator that answers at once (the time on the wire is not what is measured).

Three paths, each request one :class:`~x402gate.flow.PaymentFlow` as the adapters drive it, on
each store (``memory``, and ``sqlite``, the default store: a fresh file per gate):

* ``exact``: a paid request (``begin``: decode, local signature check, claim, verify; the
  handler's answer through ``response_start``: settle; ``sent``: the answer delivered), each
  with its own authorization signed beforehand;
* ``credit``: a request served from the payer's credit with its session token, on a route
  priced per second (reserve before the handler, charge what ran after the answer);
* ``channel``: a ``batch-settlement`` voucher on a channel the store knows with fresh chain
  figures (every voucher checked locally, its step taken and committed in the store), the
  vouchers ``k x price`` signed beforehand.

Variants:

* ``bare``: the gate's telemetry and journal switched off (no log, no metrics, no spans, no
  journal row): the baseline;
* ``bare again``: the same, measured as a variant: what it "adds" is the noise floor;
* ``logging``: the payment log on, INFO lines formatted by :class:`JsonFormatter` into a
  handler that writes to an in-memory stream;
* ``metrics``: :class:`~x402gate.observability.PaymentMetrics` only;
* ``journal``: the payments journal only (its row written by the commit's store transaction);
* ``logging+metrics``: both;
* ``logging+metrics+journal``: the three, the configuration the goal is about (at most 50 µs
  added);
* ``+spans``: the three, plus OpenTelemetry spans into the SDK's in-memory exporter (when the
  SDK is installed; shown for information).

Each repeat builds one fresh gate per variant (a fresh store) and serves their ``--n``
requests interleaved: request ``i`` of every variant, then request ``i + 1``, the order of the
variants shuffled at each step, so that background load (and whatever the request before left
behind) hits all of them alike. The CPU time of
each request is read on its own with ``time.process_time`` (every thread of the process: the
store's worker thread too; garbage collector paused). The table gives the median CPU per
request and what a variant adds: the median, over every request, of its CPU minus that of the
``bare`` request served beside it (microseconds apart, under the same background load).

Other per-request features add a variant with :func:`variant` (name, a function that sets a
fresh gate up), and the table shows them beside these.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import itertools
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402gate import PaymentGate
from x402gate.assets import Asset
from x402gate.credit import SESSION_HEADER
from x402gate.flow import PaymentFlow
from x402gate.gate import ChannelSettings, Route
from x402gate.metering import PerSecond
from x402gate.observability import JsonFormatter, PaymentMetrics
from x402gate.request import RequestInfo
from x402gate.schemes.batch_settlement.digest import channel_id, voucher_digest
from x402gate.schemes.batch_settlement.wire import parse_payload
from x402gate.stores.base import credit_account
from x402gate.testing.payments import encode_payment, sign_exact_payment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, load_average, median, print_table

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ORIGIN = "https://api.example"
URL = f"{ORIGIN}/paid"
CREDIT_PAYER = Account.create().address
CREDIT_ACCOUNT = credit_account(ASSET.network, ASSET.address, CREDIT_PAYER)
PATHS = {"exact": "paid (exact)", "credit": "from credit", "channel": "channel voucher"}
STORES = ("memory", "sqlite")
GOAL_US = 50.0
ALL = "logging+metrics+journal"
CHANNEL_PAYER = Account.from_key(b"\x01" * 32)
CHANNEL_AUTHORIZER = Account.from_key(b"\x04" * 32).address


class InstantFacilitator:
    """Verifies and settles every payment at once (no network)."""

    async def supported(self) -> SupportedResponse:
        kinds = [
            SupportedKind(x402_version=2, scheme=scheme, network=ASSET.network)
            for scheme in ("exact", "batch-settlement")
        ]
        return SupportedResponse(kinds=kinds, extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(success=True, transaction="0x" + "ab" * 32, network=ASSET.network)


_FILES = itertools.count()
Setup = Callable[[PaymentGate], None]
VARIANTS: dict[str, Setup] = {}


def variant(name: str) -> Callable[[Setup], Setup]:
    """Register a variant: ``setup(gate)`` turns its feature on for a fresh gate."""

    def register(setup: Setup) -> Setup:
        VARIANTS[name] = setup
        return setup

    return register


LOG_STREAM = io.StringIO()
"""Where the payment lines go; emptied before each set of gates (bounded, and every variant
writes into a buffer of the same size)."""


def _log_to_memory() -> None:
    handler = logging.StreamHandler(LOG_STREAM)
    handler.setFormatter(JsonFormatter())
    payments = logging.getLogger("x402gate.payments")
    payments.handlers[:] = [handler]
    payments.propagate = False
    payments.setLevel(logging.INFO)  # challenged lines are DEBUG: none here, every request pays


@variant("bare")
def bare(gate: PaymentGate) -> None:
    gate.telemetry.log = None
    gate.telemetry.tracer = None
    gate.journal = False


@variant("bare again")
def bare_again(gate: PaymentGate) -> None:
    """The baseline once more: what it "adds" is the measurement's noise floor."""
    bare(gate)


@variant("logging")
def logging_only(gate: PaymentGate) -> None:
    gate.telemetry.tracer = None
    gate.journal = False


@variant("metrics")
def metrics_only(gate: PaymentGate) -> None:
    gate.telemetry.log = None
    gate.telemetry.tracer = None
    gate.journal = False
    PaymentMetrics(gate)


@variant("journal")
def journal_only(gate: PaymentGate) -> None:
    """The payments journal alone: one row per commit, in the commit's store transaction."""
    gate.telemetry.log = None
    gate.telemetry.tracer = None
    assert gate.journal, "the store keeps no journal"


@variant("logging+metrics")
def logging_and_metrics(gate: PaymentGate) -> None:
    gate.telemetry.tracer = None
    gate.journal = False
    PaymentMetrics(gate)


@variant(ALL)
def everything(gate: PaymentGate) -> None:
    """The three together: the configuration the goal is about (at most 50 µs added)."""
    gate.telemetry.tracer = None
    assert gate.journal, "the store keeps no journal"
    PaymentMetrics(gate)


def _spans() -> None:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        return
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    @variant("+spans")
    def with_spans(gate: PaymentGate) -> None:
        exporter.clear()  # the exporter keeps every span: bounded by one gate's requests
        assert gate.journal, "the store keeps no journal"
        PaymentMetrics(gate)
        gate.telemetry.tracer = provider.get_tracer("x402gate")


def make_gate(name: str, kind: str, store: str, folder: Path) -> tuple[PaymentGate, Route]:
    """A fresh gate with variant ``name`` on, over a fresh ``store`` (``memory``, ``sqlite``: a
    new file in ``folder``), and its route for ``kind`` (``exact``, ``credit``, ``channel``)."""
    url = "memory://"
    if store == "sqlite":
        url = f"sqlite:///{folder / f'gate-{next(_FILES)}.db'}"
    gate = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=InstantFacilitator(),
        store=url,
        limit_in_flight=False,
        reconcile=False,
        startup_checks="off",
        secret=b"s" * 32,
        public_origin=ORIGIN,
        channels=ChannelSettings(receiver_authorizer=CHANNEL_AUTHORIZER),
    )
    if kind == "exact":
        route = gate.route("$0.01")
    elif kind == "credit":
        # $0.001 a second, at most one: each request reserves $0.001 and is charged what ran.
        route = gate.route(PerSecond("$0.001", max_seconds=1))
        gate.store.credit_topup(CREDIT_ACCOUNT, 10**12, "bench", time.time())
    else:
        route = gate.route("$0.001")
        channel, config = VOUCHERS.channel
        # The channel as its deposit left it, its chain figures fresh: every voucher is local.
        gate.store.channel_sync(
            channel,
            config,
            balance=10**12,
            total_claimed=0,
            withdraw_requested_at=0,
            refund_nonce=0,
            now=time.time(),
        )
    gate.telemetry.name_route(route, "GET /paid")
    VARIANTS[name](gate)
    return gate, route


def sign(count: int) -> list[RequestInfo]:
    """``count`` paid requests, each with its own authorization."""
    from x402.schemas import PaymentRequirements

    requirements = PaymentRequirements(
        scheme="exact",
        network=ASSET.network,
        asset=ASSET.address,
        amount="10000",
        pay_to=PAY_TO,
        max_timeout_seconds=300,
        extra={"name": ASSET.name, "version": ASSET.version},
    )
    payer = Account.create()
    out = []
    for _ in range(count):
        payload = sign_exact_payment(payer, requirements, valid_before=int(time.time()) + 250)
        out.append(encode_payment(payload))
    return [RequestInfo("GET", "/paid", headers={"PAYMENT-SIGNATURE": h}, url=URL) for h in out]


def from_credit(gate: PaymentGate, count: int) -> list[RequestInfo]:
    """``count`` requests of the payer whose credit the gate holds, with its session token."""
    token = gate.session_tokens.issue(
        CREDIT_PAYER, ASSET.network, ASSET.address, time.time(), origin=ORIGIN
    )
    return [
        RequestInfo("GET", "/paid", headers={SESSION_HEADER: token}, url=URL) for _ in range(count)
    ]


async def serve_one(gate: PaymentGate, route: Route, request: RequestInfo) -> float:
    """CPU seconds of one request (paid, served from credit or by a voucher), every thread of
    the process counted (the store's worker thread too)."""
    started = time.process_time()
    flow = PaymentFlow(gate, route, request)
    answer = await flow.begin()
    assert answer is None, answer
    await flow.response_start(200, [("content-type", "application/json")])
    chunk = flow.body(b'{"ok":true}', True)
    assert chunk is not None
    await flow.sent(*chunk)
    for _ in range(3):  # what the request scheduled on the loop runs in its own reading
        await asyncio.sleep(0)
    return time.process_time() - started


class Vouchers:
    """One channel (payer, config, id) and its vouchers ``k x price`` for k = 1, 2..., signed
    once: every gate has a fresh store, where the channel starts at zero again."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.offer: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.channel: tuple[str, str] = ("", "")

    async def prepare(self, count: int) -> None:
        """Read the route's ``batch-settlement`` offer from a gate's 402, sign ``count``."""
        from coincurve import PrivateKey

        folder = Path(tempfile.gettempdir())
        gate, route = make_gate("bare", "exact", "memory", folder)
        route = gate.route("$0.001")
        try:
            answer = await PaymentFlow(gate, route, RequestInfo("GET", "/paid", url=URL)).begin()
        finally:
            await gate.aclose()
        assert answer is not None and answer.status == 402, answer
        required = dict(answer.headers)["PAYMENT-REQUIRED"]
        accepts = json.loads(base64.b64decode(required))["accepts"]
        self.offer = next(a for a in accepts if a["scheme"] == "batch-settlement")
        self.config = {
            "payer": CHANNEL_PAYER.address,
            "payerAuthorizer": CHANNEL_PAYER.address,
            "receiver": self.offer["payTo"],
            "receiverAuthorizer": self.offer["extra"]["receiverAuthorizer"],
            "token": self.offer["asset"],
            "withdrawDelay": self.offer["extra"]["withdrawDelay"],
            "salt": "0x" + "5a" * 32,
        }
        parsed = self._payload(0, "0x" + "00" * 65)
        config = parse_payload(parsed).config
        chain_id = int(ASSET.network.split(":")[1])
        raw_id = channel_id(config, chain_id)
        self.channel = ("0x" + raw_id.hex(), config.canonical())
        key = PrivateKey(CHANNEL_PAYER.key)
        price = int(self.offer["amount"])
        for k in range(1, count + 1):
            raw = key.sign_recoverable(voucher_digest(raw_id, k * price, chain_id), hasher=None)
            signature = "0x" + (raw[:64] + bytes([raw[64] + 27])).hex()
            body = {
                "x402Version": 2,
                "accepted": self.offer,
                "payload": self._payload(k * price, signature),
            }
            text = json.dumps(body, separators=(",", ":")).encode()
            self.heads.append(base64.b64encode(text).decode())

    def _payload(self, amount: int, signature: str) -> dict[str, Any]:
        voucher = {
            "channelId": self.channel[0] or "0x" + "00" * 32,
            "maxClaimableAmount": str(amount),
            "signature": signature,
        }
        return {"type": "voucher", "channelConfig": self.config, "voucher": voucher}

    def requests(self, count: int) -> list[RequestInfo]:
        """The first ``count`` vouchers, in order, as requests."""
        return [
            RequestInfo("GET", "/paid", headers={"PAYMENT-SIGNATURE": h}, url=URL)
            for h in self.heads[:count]
        ]


VOUCHERS = Vouchers()


def requests_for(gate: PaymentGate, kind: str, n: int) -> list[RequestInfo]:
    if kind == "exact":
        return sign(n)
    if kind == "credit":
        return from_credit(gate, n)
    return VOUCHERS.requests(n)


Key = tuple[str, str, str]  # (store, path, variant)


async def interleaved(
    store: str, kind: str, names: list[str], n: int, folder: Path
) -> dict[str, list[float]]:
    """One fresh gate per variant, their ``n`` requests served in turn: request ``i`` of every
    variant, then request ``i + 1``..., the order of the variants shuffled at each step. The
    CPU of each request is read on its own, so a variant and the baseline are compared on
    requests served microseconds apart, under the same background load."""
    gates = {name: make_gate(name, kind, store, folder) for name in names}
    requests = {name: requests_for(gates[name][0], kind, n) for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    LOG_STREAM.seek(0)
    LOG_STREAM.truncate()
    gc.collect()
    gc.disable()
    order = list(names)
    shuffle = random.Random(n).shuffle
    try:
        for i in range(n):
            # A new order at each step: no variant always follows the same one (what a request
            # leaves behind, a cold cache, a thread still busy, lands on any of them alike).
            shuffle(order)
            for name in order:
                gate, route = gates[name]
                cpu[name].append(await serve_one(gate, route, requests[name][i]))
    finally:
        gc.enable()
        for gate, _ in gates.values():
            await gate.aclose()
    return cpu


async def run(stores: list[str], kinds: list[str], n: int, repeats: int) -> dict[Key, list[float]]:
    """Per (store, path, variant), the CPU seconds of every measured request, in order: the
    ``i``-th entries of two variants were served side by side."""
    results: dict[Key, list[float]] = {
        (store, kind, name): [] for store in stores for kind in kinds for name in VARIANTS
    }
    if "channel" in kinds:
        await VOUCHERS.prepare(n)
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="x402gate-obs-") as tmp:
        folder = Path(tmp)
        for store in stores:
            for kind in kinds:  # warm up every path (imports, caches) outside the timing
                await interleaved(store, kind, names, 10, folder)
        for _ in range(repeats):
            for store in stores:
                for kind in kinds:
                    cpu = await interleaved(store, kind, names, n, folder)
                    for name in names:
                        results[(store, kind, name)].extend(cpu[name])
                for path in folder.iterdir():  # one file per gate: drop them as they pile up
                    path.unlink()
    return results


def _list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per gate")
    parser.add_argument("--repeats", type=int, default=5, help="fresh gates per variant")
    parser.add_argument(
        "--paths",
        type=_list,
        default=list(PATHS),
        help="comma-separated: exact (a paid request), credit (served from credit),"
        " channel (a batch-settlement voucher)",
    )
    parser.add_argument(
        "--stores", type=_list, default=list(STORES), help="comma-separated: memory, sqlite"
    )
    args = parser.parse_args()
    _log_to_memory()
    _spans()
    print(
        header(
            "x402gate observability: CPU per paid request, in process",
            ["x402gate", "x402", "prometheus-client", "opentelemetry-sdk"],
            [
                git_state(),
                f"{args.n} requests x {args.repeats} fresh gates per variant, interleaved",
                f"load average before: {load_average()}",
            ],
        )
    )
    results = asyncio.run(run(args.stores, args.paths, args.n, args.repeats))

    def added_us(store: str, kind: str, name: str) -> float:
        # Paired by request: each is compared with the bare request served beside it.
        pairs = zip(results[(store, kind, name)], results[(store, kind, "bare")], strict=True)
        return median([(v - b) * 1e6 for v, b in pairs])

    rows = []
    for (store, kind, name), values in results.items():
        us = median(values) * 1e6
        shown = "" if name == "bare" else f"{added_us(store, kind, name):+.1f}"
        rows.append((f"{store}, {PATHS[kind]}: {name}", f"{us:.1f}", shown))
    print_table(
        [
            "store, path: variant",
            "CPU µs / request (median)",
            "added µs (median of paired requests)",
        ],
        rows,
    )
    print(f"load average after: {load_average()}")
    print()
    for store in args.stores:
        for kind in args.paths:
            added = added_us(store, kind, ALL)
            verdict = "within" if added <= GOAL_US else "OVER"
            goal = f"{GOAL_US:.0f} µs goal"
            print(f"{store}, {PATHS[kind]}: {ALL} add {added:.1f} µs: {verdict} the {goal}")


if __name__ == "__main__":
    main()
