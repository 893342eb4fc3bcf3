"""Benchmark: server CPU that payment logs and metrics add to a request, in one run.

Run with ``.venv/bin/python bench/observability.py [--n 150] [--repeats 15]``. No chain, no
network: a facilitator that answers at once (the time on the wire is not what is measured).

Two paths (``--paths``), each request one :class:`~x402gate.flow.PaymentFlow` as the adapters
drive it, on the memory store:

* ``exact``: a paid request (``begin``: decode, local signature check, claim, verify; the
  handler's answer through ``response_start``: settle; ``sent``: the answer delivered), each
  with its own authorization signed beforehand;
* ``credit``: a request served from the payer's credit with its session token, on a route
  priced per second (reserve before the handler, charge what ran after the answer).

Variants:

* ``bare``: the gate's telemetry switched off (no log, no metrics, no spans): the baseline;
* ``bare again``: the same, measured as a variant: what it "adds" is the noise floor;
* ``logging``: the payment log on, INFO lines formatted by :class:`JsonFormatter` into a
  handler that writes to an in-memory stream;
* ``metrics``: :class:`~x402gate.observability.PaymentMetrics` only;
* ``logging+metrics``: both, the configuration the goal is about (at most 50 µs added);
* ``+spans``: both, plus OpenTelemetry spans into the SDK's in-memory exporter (when the SDK is
  installed; shown for information).

Each repeat runs every variant in turn (round-robin, so background load hits all of them),
a batch of ``--n`` requests per variant, its CPU time read with ``time.process_time`` around
the batch (garbage collector paused). The table gives the median CPU per request and what a
variant adds: the median, over the repeats, of its batch minus the ``bare`` batch of the same
repeat (pairs run seconds apart, under the same background load).

Other per-request features add a variant with :func:`variant` (name, a function that sets a
fresh gate up), and the table shows them beside these.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import logging
import sys
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
from x402gate.gate import Route
from x402gate.metering import PerSecond
from x402gate.observability import JsonFormatter, PaymentMetrics
from x402gate.request import RequestInfo
from x402gate.stores.base import credit_account
from x402gate.testing.payments import encode_payment, sign_exact_payment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, median, print_table

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ORIGIN = "https://api.example"
URL = f"{ORIGIN}/paid"
CREDIT_PAYER = Account.create().address
CREDIT_ACCOUNT = credit_account(ASSET.network, ASSET.address, CREDIT_PAYER)
PATHS = {"exact": "paid (exact)", "credit": "from credit"}
GOAL_US = 50.0


class InstantFacilitator:
    """Verifies and settles every payment at once (no network)."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(success=True, transaction="0x" + "ab" * 32, network=ASSET.network)


Setup = Callable[[PaymentGate], None]
VARIANTS: dict[str, Setup] = {}


def variant(name: str) -> Callable[[Setup], Setup]:
    """Register a variant: ``setup(gate)`` turns its feature on for a fresh gate."""

    def register(setup: Setup) -> Setup:
        VARIANTS[name] = setup
        return setup

    return register


def _log_to_memory() -> None:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    payments = logging.getLogger("x402gate.payments")
    payments.handlers[:] = [handler]
    payments.propagate = False
    payments.setLevel(logging.INFO)  # challenged lines are DEBUG: none here, every request pays


@variant("bare")
def bare(gate: PaymentGate) -> None:
    gate.telemetry.log = None
    gate.telemetry.tracer = None


@variant("bare again")
def bare_again(gate: PaymentGate) -> None:
    """The baseline once more: what it "adds" is the measurement's noise floor."""
    bare(gate)


@variant("logging")
def logging_only(gate: PaymentGate) -> None:
    gate.telemetry.tracer = None


@variant("metrics")
def metrics_only(gate: PaymentGate) -> None:
    gate.telemetry.log = None
    gate.telemetry.tracer = None
    PaymentMetrics(gate)


@variant("logging+metrics")
def logging_and_metrics(gate: PaymentGate) -> None:
    gate.telemetry.tracer = None
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
        exporter.clear()  # the exporter keeps every span: bounded by one batch
        PaymentMetrics(gate)
        gate.telemetry.tracer = provider.get_tracer("x402gate")


def make_gate(name: str, kind: str) -> tuple[PaymentGate, Route]:
    """A fresh gate with variant ``name`` on, and its route for ``kind`` (``exact``, ``credit``)."""
    gate = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=InstantFacilitator(),
        store="memory://",
        limit_in_flight=False,
        reconcile=False,
        startup_checks="off",
        secret=b"s" * 32,
        public_origin=ORIGIN,
    )
    if kind == "exact":
        route = gate.route("$0.01")
    else:
        # $0.001 a second, at most one: each request reserves $0.001 and is charged what ran.
        route = gate.route(PerSecond("$0.001", max_seconds=1))
        gate.store.credit_topup(CREDIT_ACCOUNT, 10**12, "bench", time.time())
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


async def serve(gate: PaymentGate, route: Route, requests: list[RequestInfo]) -> float:
    """CPU seconds per request over ``requests`` (each paid, or served from credit)."""
    gc.collect()
    gc.disable()
    started = time.process_time()
    for request in requests:
        flow = PaymentFlow(gate, route, request)
        answer = await flow.begin()
        assert answer is None, answer
        await flow.response_start(200, [("content-type", "application/json")])
        chunk = flow.body(b'{"ok":true}', True)
        assert chunk is not None
        await flow.sent(*chunk)
    spent = time.process_time() - started
    gc.enable()
    return spent / len(requests)


async def batch(name: str, kind: str, n: int) -> float:
    gate, route = make_gate(name, kind)
    requests = sign(n) if kind == "exact" else from_credit(gate, n)
    try:
        return await serve(gate, route, requests)
    finally:
        await gate.aclose()


async def run(kinds: list[str], n: int, repeats: int) -> dict[tuple[str, str], list[float]]:
    results: dict[tuple[str, str], list[float]] = {
        (kind, name): [] for kind in kinds for name in VARIANTS
    }
    for kind in kinds:
        for name in VARIANTS:  # warm up every path (imports, caches) outside the timing
            await batch(name, kind, 10)
    names = list(VARIANTS)
    for repeat in range(repeats):
        # Rotated each repeat: no variant always runs first (or right after another one).
        shift = repeat % len(names)
        for kind in kinds:
            for name in names[shift:] + names[:shift]:
                results[(kind, name)].append(await batch(name, kind, n))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="paid requests per batch")
    parser.add_argument("--repeats", type=int, default=15, help="batches per variant")
    parser.add_argument(
        "--paths",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(PATHS),
        help="comma-separated: exact (a paid request), credit (served from credit)",
    )
    args = parser.parse_args()
    _log_to_memory()
    _spans()
    print(
        header(
            "x402gate observability: CPU per paid request, in process",
            ["x402gate", "x402", "prometheus-client", "opentelemetry-sdk"],
            [git_state(), f"{args.n} requests x {args.repeats} batches per variant"],
        )
    )
    results = asyncio.run(run(args.paths, args.n, args.repeats))

    def added_us(kind: str, name: str) -> float:
        # Paired by repeat: each batch is compared with the bare batch of the same repeat,
        # run under the same background load.
        pairs = zip(results[(kind, name)], results[(kind, "bare")], strict=True)
        return median([(v - b) * 1e6 for v, b in pairs])

    rows = []
    for (kind, name), values in results.items():
        us = median(values) * 1e6
        shown = "" if name == "bare" else f"{added_us(kind, name):+.1f}"
        rows.append((f"{PATHS[kind]}: {name}", f"{us:.1f}", shown))
    print_table(["path: variant", "CPU µs / request (median)", "added µs (median of pairs)"], rows)
    print()
    for kind in args.paths:
        added = added_us(kind, "logging+metrics")
        verdict = "within" if added <= GOAL_US else "OVER"
        goal = f"{GOAL_US:.0f} µs goal"
        print(f"{PATHS[kind]}: logging+metrics add {added:.1f} µs: {verdict} the {goal}")


if __name__ == "__main__":
    main()
