"""``x402gate channels ...``: operators' commands on the payment channels a store keeps.

* ``x402gate channels list --store URL [--json]``: every channel with its payer, balance,
  charged, earned, claimed, unclaimed and refundable amounts (atomic units) and its withdrawal
  state, from any store.
* ``x402gate channels refund --store URL --facilitator URL (CHANNEL_ID | --idle DURATION)``:
  returns what the payer deposited and the seller did not earn, claiming what it earned in the
  same transaction (see :mod:`x402gate.gate.refunds`). The receiver authorizer's key, when the
  seller signs itself, is read from the environment variable named by ``--authorizer-key-env``
  (never from the command line, which other users of the host can read).

Each subcommand sets ``channels_run`` on the parsed arguments; :func:`add_parser` answers the
subcommands' parser so that more of them can be added beside these.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stores import Store
    from .stores.channels import ChannelState

__all__ = ["add_parser", "channel_row", "parse_duration", "run"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit, ``s``, ``m``, ``h``, ``d`` or ``w``
    (``90``, ``30m``, ``7d``). :class:`ValueError` otherwise."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r:.40} (e.g. 3600, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_parser(sub: Any) -> Any:
    """Add ``channels`` to the command's subparsers; answers its own subparsers."""
    channels = sub.add_parser(
        "channels",
        help="list, refund, claim and settle the payment channels a store keeps",
        description="Operators' commands on payment channels (docs/channels.md).",
    )
    commands = channels.add_subparsers(dest="channels_command", metavar="COMMAND")
    listing = commands.add_parser("list", help="every channel with its amounts")
    _store_option(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per channel")
    listing.set_defaults(channels_run=_list)
    refund = commands.add_parser(
        "refund",
        help="return the unearned remainder of a channel, or of every idle one, to its payer",
    )
    _store_option(refund)
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
    return commands


def _store_option(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store",
        help="the gate's store URL (sqlite:///x402gate.db, redis://..., postgresql://...)",
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        help="a gateway file (gateway.yaml): its store, facilitator and channel settings",
    )


def _gateway(path: str) -> Any:
    """The gateway a file describes (its gate's store, facilitator and channels), or None
    after saying why not."""
    from .errors import ConfigurationError
    from .gateway.app import Gateway
    from .gateway.config import GatewayConfigError, load_config

    try:
        config = load_config(path)
    except GatewayConfigError as exc:
        print(f"{path}: invalid: {exc}", file=sys.stderr)
        return None
    try:
        return Gateway(config)
    except ConfigurationError as exc:
        print(f"{path}: {config.redactor(str(exc))}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Run the ``channels`` subcommand ``args`` names; the exit status."""
    command = getattr(args, "channels_run", None)
    if command is None:
        print(
            "x402gate channels: name a command (list, refund, claim, settle); see --help",
            file=sys.stderr,
        )
        return 2
    status: int = command(args)
    return status


def _open(url: str) -> Store | None:
    from .errors import ConfigurationError, StoreError
    from .stores import open_store

    try:
        return open_store(url)
    except (ConfigurationError, StoreError, ValueError) as exc:
        print(f"x402gate channels: cannot open the store: {exc}", file=sys.stderr)
        return None


def _time(seconds: float) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def channel_row(state: ChannelState) -> dict[str, Any]:
    """What ``channels list`` shows of a channel (amounts as decimal text: any ``uint256``)."""
    from .gate.refunds import refundable

    try:
        payer = json.loads(state.config).get("payer")
    except (ValueError, AttributeError):
        payer = None
    return {
        "channel_id": state.channel_id,
        "payer": payer,
        "balance": str(state.balance),
        "charged": str(state.charged),
        "earned": str(state.earned),
        "claimed": str(state.total_claimed),
        "unclaimed": str(max(state.earned - state.total_claimed, 0)),
        "refundable": str(refundable(state)),
        "withdrawal": _time(state.withdraw_requested_at),
        "last_request": _time(state.last_request_at),
        "in_request": state.step is not None and state.step.expires_at > time.time(),
    }


_COLUMNS = ("channel_id", "payer", "balance", "charged", "earned", "claimed", "unclaimed")


def _list(args: argparse.Namespace) -> int:
    from .errors import ConfigurationError, StoreError
    from .stores.channels import MAX_CHANNEL_LIST

    gateway = None
    if args.config is not None:
        gateway = _gateway(args.config)
        if gateway is None:
            return 1
        store = gateway.gate.store
    else:
        store = _open(args.store)
        if store is None:
            return 1
    try:
        after: str | None = None
        shown = 0
        if not args.json:
            print("\t".join((*_COLUMNS, "refundable", "withdrawal", "last_request")))
        while True:
            page = store.channel_list(MAX_CHANNEL_LIST, after)
            for state in page:
                row = channel_row(state)
                if args.json:
                    print(json.dumps(row, separators=(",", ":")))
                else:
                    cells = [row[c] for c in _COLUMNS]
                    cells += [row["refundable"], row["withdrawal"] or "-", row["last_request"]]
                    print("\t".join(str(c or "-") for c in cells))
                shown += 1
            if len(page) < MAX_CHANNEL_LIST:
                break
            after = page[-1].channel_id
    except (StoreError, ConfigurationError, ValueError) as exc:  # also: keeps no channels
        print(f"x402gate channels list: {exc}", file=sys.stderr)
        return 1
    finally:
        if gateway is not None:
            asyncio.run(gateway.aclose())
        else:
            store.close()
    if not args.json:
        print(f"{shown} channel{'s' if shown != 1 else ''}", file=sys.stderr)
    return 0


def _refund(args: argparse.Namespace) -> int:
    from .errors import ConfigurationError

    idle: float | None = None
    if args.idle is not None:
        try:
            idle = parse_duration(args.idle)
        except ValueError as exc:
            print(f"x402gate channels refund: {exc}", file=sys.stderr)
            return 2
    key = None
    if args.authorizer_key_env:
        key = os.environ.get(args.authorizer_key_env)
        if not key:
            print(
                f"x402gate channels refund: ${args.authorizer_key_env} is not set",
                file=sys.stderr,
            )
            return 2
    if args.config is not None:
        gateway = _gateway(args.config)
        if gateway is None:
            return 1
        try:
            return asyncio.run(_refund_gateway(args, gateway, idle))
        except ConfigurationError as exc:
            print(f"x402gate channels refund: {exc}", file=sys.stderr)
            return 1
    if args.facilitator is None:
        print("x402gate channels refund: --store needs --facilitator URL", file=sys.stderr)
        return 2
    store = _open(args.store)
    if store is None:
        return 1
    try:
        return asyncio.run(_refund_async(args, store, key, idle))
    except ConfigurationError as exc:
        print(f"x402gate channels refund: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


async def _refund_gateway(args: argparse.Namespace, gateway: Any, idle: float | None) -> int:
    """``refund --config FILE``: the gateway's own store, facilitator, networks and key."""
    from .gate.refunds import ChannelRefunder

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
    from .errors import FacilitatorError, StoreError
    from .facilitators import HTTPFacilitator
    from .gate.refunds import ChannelRefunder
    from .schemes.batch_settlement import codes

    facilitator = HTTPFacilitator(args.facilitator)
    try:
        networks: list[str] = list(args.network or [])
        if not networks:
            supported = await facilitator.supported()
            networks = [k.network for k in supported.kinds if k.scheme == codes.SCHEME]
            if not networks:
                print(
                    "x402gate channels refund: the facilitator supports no batch-settlement "
                    "network (give --network)",
                    file=sys.stderr,
                )
                return 1
        refunder = ChannelRefunder(store, facilitator, networks, receiver_authorizer_key=key)
        return await _refund_with(args, refunder, idle)
    except (StoreError, FacilitatorError) as exc:
        print(f"x402gate channels refund: {exc}", file=sys.stderr)
        return 1
    finally:
        await facilitator.aclose()


async def _refund_with(args: argparse.Namespace, refunder: Any, idle: float | None) -> int:
    """Run the refund(s) ``args`` ask for with ``refunder``; print the outcome; the status."""
    from .errors import FacilitatorError, StoreError
    from .gate.refunds import RefundError, RefundResult

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
        print(f"x402gate channels refund: {exc}", file=sys.stderr)
        return 1
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
