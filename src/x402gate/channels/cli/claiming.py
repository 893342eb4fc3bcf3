"""``x402gate channels claim`` and ``x402gate channels settle``: claims and settlement from the
command line, for cron or by hand.

Either from the gateway file the server runs (``--config gateway.yaml``: its store, facilitator,
assets, ``pay_to`` and ``channels:`` settings, authorizer key included), or from flags::

    x402gate channels claim --store sqlite:///x402gate.db --facilitator https://fac.example \\
        [--network eip155:8453] [--authorizer-key-env RECEIVER_AUTHORIZER_KEY] [--no-settle]
    x402gate channels settle --facilitator https://fac.example --receiver 0x... --token 0x... \\
        [--store sqlite:///x402gate.db] [--rpc-url URL] [--network eip155:8453]

``claim`` claims every channel with unclaimed value (in batches of ``--batch``), then settles to
the receivers it claimed for (unless ``--no-settle``). The receiver authorizer's key, when the
seller signs claims itself, is read from the environment variable ``--authorizer-key-env``
names, never from the command line (other users of the host can read it); without one the
facilitator signs. A claimer running in the servers and a cron job may overlap: the command takes
the store's claim lease (:data:`~x402gate.channels.claimer.CLAIM_LEASE`, the one the background
claimers take, from flags as from ``--config``) and waits for nothing: exit status 3
(:data:`LOCKED`) when another claimer holds it. Exit status 0 when everything went through, 1
when something failed (it is retried by the next run: nothing is recorded that the chain did not
confirm).

Both record every claim and settlement in the store's payments journal (:mod:`..journal`), as
the background claimer does; ``settle`` needs ``--store`` (or ``--config``) for that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..claimer import CLAIM_LEASE, gate_engine
from .common import GatewayRefused, Refusal, batch_networks, fail, open_gateway, read_authorizer_key

if TYPE_CHECKING:
    from ..claims import ClaimEngine

__all__ = ["LOCKED", "add_claim_settle", "run_claim", "run_settle"]

LOCKED = 3
"""Exit status when another claimer holds the store's claim lease."""

LEASE_SECONDS = 600.0
"""How long the claim lease is held for without renewal: it is renewed before each batch, and
a run that dies leaves it to expire after this."""


def add_claim_settle(commands: Any) -> None:
    """Add ``claim`` and ``settle`` to the ``channels`` subcommands (each sets
    ``channels_run``)."""
    claim = commands.add_parser(
        "claim",
        help="claim what the channels earned (one transaction per batch), then settle it",
        description="Claim every channel with unclaimed value, then settle to the receivers.",
    )
    _source_options(claim, store=True)
    claim.add_argument("--batch", type=int, default=100, help="channels per claim transaction")
    claim.add_argument("--no-settle", action="store_true", help="claim only; settle later")
    claim.add_argument("--json", action="store_true", help="print the outcome as JSON")
    claim.set_defaults(channels_run=run_claim)
    settle = commands.add_parser(
        "settle",
        help="sweep what is claimed to the receiver",
        description="Transfer everything claimed and not yet settled to each receiver.",
    )
    _source_options(settle, store=False)
    settle.add_argument("--receiver", help="the receiver (pay_to) address")
    settle.add_argument("--token", help="the token address")
    settle.add_argument("--json", action="store_true", help="print the outcome as JSON")
    settle.set_defaults(channels_run=run_settle)


def _source_options(parser: argparse.ArgumentParser, *, store: bool) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="the gateway file: its store, facilitator and channels"
    )
    parser.add_argument(
        "--store",
        help="the gate's store URL (sqlite:///x402gate.db, ...): its channels, and its payments "
        "journal, which records each claim and settlement"
        + ("" if store else " (optional: without it the settlement is recorded nowhere)"),
    )
    parser.add_argument("--facilitator", help="the facilitator's URL")
    parser.add_argument(
        "--network",
        help="the network (CAIP-2) of the channels; default: the one the facilitator supports "
        "batch-settlement on",
    )
    parser.add_argument(
        "--rpc-url",
        help="a JSON-RPC URL of the chain, to read the channels and the settled amounts there "
        "directly (default: through the facilitator, which may not report the amounts)",
    )
    parser.add_argument(
        "--authorizer-key-env",
        metavar="VAR",
        help="the environment variable holding the receiver authorizer's private key, when "
        "the seller signs claims itself (default: the facilitator signs them)",
    )


class _Setup:
    """The engine a command runs, and what to close afterwards."""

    def __init__(self, engine: ClaimEngine, closers: list[Any]) -> None:
        self.engine = engine
        self.closers = closers

    async def close(self) -> None:
        for closer in self.closers:
            result = closer()
            if asyncio.iscoroutine(result):
                await result


async def _setup(args: argparse.Namespace, command: str) -> _Setup | str:
    """The engine from ``--config`` or from the flags; a message when they do not make one."""
    from ...errors import ConfigurationError, FacilitatorError, StoreError
    from ..claims import ClaimEngine

    batch = getattr(args, "batch", 100)
    if not 0 < batch <= 1000:
        return "--batch must be from 1 to 1000"
    if args.config:
        try:
            gateway = open_gateway(args.config)
        except GatewayRefused as exc:
            return f"{args.config}: {exc}"
        gate = gateway.gate
        if gate.channels is None:
            await gateway.aclose()
            return f"{args.config}: no channels: section"
        return _Setup(gate_engine(gate, batch), [gateway.aclose])
    if not args.facilitator:
        return "give --config FILE, or --facilitator URL (and --store URL)"
    try:
        key = read_authorizer_key(args)
    except Refusal as exc:
        return str(exc)
    from ...facilitators import HTTPFacilitator
    from ...stores import open_store
    from ...stores.memory import MemoryStore

    try:
        facilitator = HTTPFacilitator(args.facilitator)
        store_url = getattr(args, "store", None)
        if command == "claim" and not store_url:
            return "give --store URL (the store the gate keeps its channels in)"
        store = open_store(store_url) if store_url else MemoryStore()
    except (ConfigurationError, StoreError, ValueError) as exc:
        return str(exc)
    network = args.network
    if network is None:
        try:
            found = sorted(set(await batch_networks(facilitator)))
        except FacilitatorError as exc:
            store.close()
            return f"the facilitator did not answer: {exc}"
        if len(found) != 1:
            store.close()
            return "give --network: the facilitator supports batch-settlement on " + (
                ", ".join(found) or "no network"
            )
        network = found[0]
    try:
        rpc_url = getattr(args, "rpc_url", None)
        engine = ClaimEngine(
            store,
            facilitator,
            network=network,
            rpc_urls={network: rpc_url} if rpc_url else None,
            authorizer_key=key,
            batch=batch,
        )
    except ConfigurationError as exc:
        store.close()
        return str(exc)
    return _Setup(engine, [facilitator.aclose, store.close])


def run_claim(args: argparse.Namespace) -> int:
    """``x402gate channels claim``: the exit status."""
    return _run(args, "claim", _claim)


def run_settle(args: argparse.Namespace) -> int:
    """``x402gate channels settle``: the exit status."""
    return _run(args, "settle", _settle)


def _run(
    args: argparse.Namespace,
    command: str,
    body: Callable[[argparse.Namespace, ClaimEngine], Awaitable[int]],
) -> int:
    """Set up the engine ``args`` describe, run ``body`` with it, close what was opened."""

    async def main() -> int:
        setup = await _setup(args, command)
        if isinstance(setup, str):
            return fail(command, setup)
        try:
            return await body(args, setup.engine)
        finally:
            await setup.close()

    return asyncio.run(main())


async def _claim(args: argparse.Namespace, engine: ClaimEngine) -> int:
    from ...errors import StoreError

    store = engine.store
    holder = f"cli:{os.getpid()}:{secrets.token_hex(6)}"
    lost = False

    async def renew() -> bool:
        """Keep the lease before each batch (a long run outlives ``LEASE_SECONDS``); False
        when another claimer took it: the run stops there."""
        nonlocal lost
        held: bool = await engine._store(
            store.lease_acquire, CLAIM_LEASE, holder, LEASE_SECONDS, engine.clock.now()
        )
        lost = lost or not held
        return held

    try:
        if not await renew():
            who = await engine._store(store.lease_holder, CLAIM_LEASE, engine.clock.now())
            fail(
                "claim",
                f"the store's claim lease is held by {who or 'another claimer'} (a server's "
                "background claimer, or another run of this command); nothing done",
            )
            return LOCKED
        try:
            report = await engine.claim(refresh=True, max_batches=1000, guard=renew)
            settled = None
            if not lost and not args.no_settle and report.settle:
                settled = await engine.settle(report.settle)
        finally:
            await engine._store(store.lease_release, CLAIM_LEASE, holder)
    except StoreError as exc:
        return fail("claim", f"store: {exc}")
    if lost:
        report.failures.append("another claimer took the store's claim lease; the rest is left")
    failures = report.failures + (settled.failures if settled else [])
    settle_transactions = settled.transactions if settled else []
    outcome = {
        "channels": report.channels,
        "claimed": str(report.amount),
        "claim_transactions": report.transactions,
        "settled": str(settled.amount if settled else 0),
        "settle_transactions": settle_transactions,
        "failures": failures,
    }
    if args.json:
        print(json.dumps(outcome))
    else:
        print(
            f"claimed {report.amount} from {report.channels} channels in "
            f"{len(report.transactions)} transactions; settled "
            f"{settled.amount if settled else 0} in {len(settle_transactions)} transactions"
        )
        for failure in failures:
            print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


async def _settle(args: argparse.Namespace, engine: ClaimEngine) -> int:
    if args.receiver or args.token:
        if not (args.receiver and args.token) or engine.network is None:
            return fail("settle", "give both --receiver and --token (and --facilitator)")
        targets = [(engine.network, args.receiver, args.token)]
    else:
        targets = engine.settle_targets()
        if not targets:
            return fail("settle", "give --receiver and --token, or --config FILE")
    report = await engine.settle(targets)
    if args.json:
        outcome = {
            "settled": str(report.amount),
            "transactions": report.transactions,
            "failures": report.failures,
        }
        print(json.dumps(outcome))
    else:
        print(f"settled {report.amount} in {len(report.transactions)} transactions")
        for failure in report.failures:
            print(f"failed: {failure}", file=sys.stderr)
    return 1 if report.failures else 0
