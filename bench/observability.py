"""Benchmark: server CPU that payment logs and metrics add to a paid request, in one run.

Run with ``.venv/bin/python bench/observability.py [--n 150] [--repeats 15]``. No chain, no
network: a facilitator that answers at once (the time on the wire is not what is measured).

Every variant pays the same way, in process: one :class:`~x402gate.flow.PaymentFlow` per
request as the adapters drive it (``begin``: decode, local signature check, claim in the
memory store, verify; the handler's answer through ``response_start``: settle; ``sent``: the
answer delivered), each with its own authorization signed beforehand. Variants:

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
from x402gate.flow import PaymentFlow
from x402gate.gate import Route
from x402gate.observability import JsonFormatter, PaymentMetrics
from x402gate.request import RequestInfo
from x402gate.testing.payments import encode_payment, sign_exact_payment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, median, print_table

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
URL = "https://api.example/paid"
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


def make_gate(name: str) -> tuple[PaymentGate, Route]:
    gate = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=InstantFacilitator(),
        store="memory://",
        limit_in_flight=False,
        reconcile=False,
        startup_checks="off",
    )
    route = gate.route("$0.01")
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


async def serve(gate: PaymentGate, route: Route, requests: list[RequestInfo]) -> float:
    """CPU seconds per paid request over ``requests``."""
    gc.collect()
    gc.disable()
    started = time.process_time()
    for request in requests:
        flow = PaymentFlow(gate, route, request)
        answer = await flow.begin()
        assert answer is None, answer
        await flow.response_start(200, [("content-type", "application/json")])
        await flow.sent(b'{"ok":true}', True)
    spent = time.process_time() - started
    gc.enable()
    return spent / len(requests)


async def run(n: int, repeats: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    warm = sign(50)
    for name in VARIANTS:  # warm up every path (imports, caches) outside the timing
        gate, route = make_gate(name)
        await serve(gate, route, warm[:10])
        await gate.aclose()
        warm = warm[10:] or sign(50)
    names = list(VARIANTS)
    for repeat in range(repeats):
        # Rotated each repeat: no variant always runs first (or right after another one).
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            requests = sign(n)
            gate, route = make_gate(name)
            results[name].append(await serve(gate, route, requests))
            await gate.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="paid requests per batch")
    parser.add_argument("--repeats", type=int, default=15, help="batches per variant")
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
    results = asyncio.run(run(args.n, args.repeats))
    bare_runs = results["bare"]

    def added_us(name: str) -> float:
        # Paired by repeat: each batch is compared with the bare batch run just before it,
        # under the same background load.
        return median([(v - b) * 1e6 for v, b in zip(results[name], bare_runs, strict=True)])

    rows = []
    for name, values in results.items():
        us = median(values) * 1e6
        shown = "" if name == "bare" else f"{added_us(name):+.1f}"
        rows.append((name, f"{us:.1f}", shown))
    print_table(["variant", "CPU µs / paid request (median)", "added µs (median of pairs)"], rows)
    added = added_us("logging+metrics")
    verdict = "within" if added <= GOAL_US else "OVER"
    goal = f"{GOAL_US:.0f} µs goal"
    print(f"\nlogging+metrics add {added:.1f} µs per paid request: {verdict} the {goal}")


if __name__ == "__main__":
    main()
