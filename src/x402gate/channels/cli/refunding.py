"""``x402gate channels refund (--store URL --facilitator URL | --config FILE) (CHANNEL_ID |
--idle DURATION)``: returns what the payer deposited and the seller did not earn, claiming what
it earned in the same transaction (see :mod:`x402gate.gate.refunds`). The receiver authorizer's
key, when the seller signs itself, is read from the environment variable named by
``--authorizer-key-env`` (never from the command line, which other users of the host can read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import (
    Refusal,
    batch_networks,
    fail,
    gateway_or_none,
    open_store,
    parse_duration,
    read_authorizer_key,
    store_or_config,
)

if TYPE_CHECKING:
    from ...stores import Store

__all__ = ["add_refund"]


def add_refund(commands: Any) -> None:
    """Add ``refund`` to the ``channels`` subcommands."""
    refund = commands.add_parser(
        "refund",
        help="return the unearned remainder of a channel, or of every idle one, to its payer",
    )
    store_or_config(refund)
    refund.add_argument("--facilitator", help="the facilitator's URL (with --store)")
    refund.add_argument(
        "--network",
        action="append",
        help="a network the channels are on (CAIP-2, repeatable); default: the ones the "
        "facilitator supports batch-settlement on",
    )
    refund.add_argument(
        "--authorizer-key-env",
        metavar="VAR",
        help="the environment variable holding the receiver authorizer's private key, when "
        "the seller signs refunds itself (default: the facilitator signs them)",
    )
    refund.add_argument("--json", action="store_true", help="print the outcome as JSON")
    which = refund.add_mutually_exclusive_group(required=True)
    which.add_argument("channel_id", nargs="?", help="the channel to refund (0x + 64 hex)")
    which.add_argument(
        "--idle",
        metavar="DURATION",
        help="refund every channel without a request for this long (e.g. 7d, 12h)",
    )
    refund.set_defaults(channels_run=_refund)


def _refund(args: argparse.Namespace) -> int:
    from ...errors import ConfigurationError

    idle: float | None = None
    try:
        if args.idle is not None:
            try:
                idle = parse_duration(args.idle)
            except ValueError as exc:
                raise Refusal(str(exc)) from None
        key = read_authorizer_key(args)
    except Refusal as exc:
        return fail("refund", str(exc))
    if args.config is not None:
        gateway = gateway_or_none(args.config)
        if gateway is None:
            return 1
        try:
            return asyncio.run(_refund_gateway(args, gateway, idle))
        except ConfigurationError as exc:
            return fail("refund", str(exc), 1)
    if args.facilitator is None:
        return fail("refund", "--store needs --facilitator URL")
    store = open_store(args.store)
    if store is None:
        return 1
    try:
        return asyncio.run(_refund_async(args, store, key, idle))
    except ConfigurationError as exc:
        return fail("refund", str(exc), 1)
    finally:
        store.close()


async def _refund_gateway(args: argparse.Namespace, gateway: Any, idle: float | None) -> int:
    """``refund --config FILE``: the gateway's own store, facilitator, networks and key."""
    from ...gate.refunds import ChannelRefunder

    try:
        refunder = ChannelRefunder.for_gate(gateway.gate)
        if args.network:
            refunder.networks = list(args.network)
        return await _refund_with(args, refunder, idle)
    finally:
        await gateway.aclose()


async def _refund_async(
    args: argparse.Namespace, store: Store, key: str | None, idle: float | None
) -> int:
    from ...errors import FacilitatorError, StoreError
    from ...facilitators import HTTPFacilitator
    from ...gate.refunds import ChannelRefunder

    facilitator = HTTPFacilitator(args.facilitator)
    try:
        networks: list[str] = list(args.network or [])
        if not networks:
            networks = await batch_networks(facilitator)
            if not networks:
                return fail(
                    "refund",
                    "the facilitator supports no batch-settlement network (give --network)",
                    1,
                )
        refunder = ChannelRefunder(store, facilitator, networks, receiver_authorizer_key=key)
        return await _refund_with(args, refunder, idle)
    except (StoreError, FacilitatorError) as exc:
        return fail("refund", str(exc), 1)
    finally:
        await facilitator.aclose()


async def _refund_with(args: argparse.Namespace, refunder: Any, idle: float | None) -> int:
    """Run the refund(s) ``args`` ask for with ``refunder``; print the outcome; the status."""
    from ...errors import FacilitatorError, StoreError
    from ...gate.refunds import RefundError, RefundResult

    try:
        done: list[RefundResult] = []
        failed: dict[str, Exception] = {}
        if idle is None:
            try:
                done.append(await refunder.refund(args.channel_id))
            except (RefundError, StoreError, FacilitatorError, ValueError) as exc:
                failed[str(args.channel_id)] = exc
        else:
            done, more = await refunder.refund_idle(idle)
            failed.update(more)
    except (StoreError, FacilitatorError) as exc:
        return fail("refund", str(exc), 1)
    for result in done:
        row = {
            "channel_id": result.channel_id,
            "refunded": str(result.refunded),
            "claimed": str(result.claimed),
            "transaction": result.transaction,
        }
        if args.json:
            print(json.dumps(row, separators=(",", ":")))
        else:
            print(
                f"{result.channel_id}: refunded {result.refunded} to the payer, claimed total "
                f"{result.claimed}, transaction {result.transaction}"
            )
    for channel_id, problem in failed.items():
        reason = problem.code if isinstance(problem, RefundError) else str(problem)
        if args.json:
            print(json.dumps({"channel_id": channel_id, "error": reason}, separators=(",", ":")))
        else:
            print(f"{channel_id}: not refunded: {reason}", file=sys.stderr)
    if not args.json and idle is not None and not done and not failed:
        print("no idle channel to refund", file=sys.stderr)
    return 1 if failed else 0
