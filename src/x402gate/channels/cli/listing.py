"""``x402gate channels list (--store URL | --config FILE) [--json]``: every channel with its
payer, balance, charged, earned, claimed, unclaimed and refundable amounts (atomic units) and its
withdrawal state, from any store."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .common import fail, gateway_or_none, open_store, store_or_config

if TYPE_CHECKING:
    from ...stores.channels import ChannelState

__all__ = ["add_list", "channel_row"]

_COLUMNS = ("channel_id", "payer", "balance", "charged", "earned", "claimed", "unclaimed")


def add_list(commands: Any) -> None:
    """Add ``list`` to the ``channels`` subcommands."""
    listing = commands.add_parser("list", help="every channel with its amounts")
    store_or_config(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per channel")
    listing.set_defaults(channels_run=_list)


def _time(seconds: float) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def channel_row(state: ChannelState) -> dict[str, Any]:
    """What ``channels list`` shows of a channel (amounts as decimal text: any ``uint256``)."""
    from ...gate.refunds import refundable

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


def _list(args: argparse.Namespace) -> int:
    from ...errors import ConfigurationError, StoreError
    from ...stores.channels import MAX_CHANNEL_LIST

    gateway = None
    if args.config is not None:
        gateway = gateway_or_none(args.config)
        if gateway is None:
            return 1
        store = gateway.gate.store
    else:
        store = open_store(args.store)
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
        return fail("list", str(exc), 1)
    finally:
        if gateway is not None:
            asyncio.run(gateway.aclose())
        else:
            store.close()
    if not args.json:
        print(f"{shown} channel{'s' if shown != 1 else ''}", file=sys.stderr)
    return 0
