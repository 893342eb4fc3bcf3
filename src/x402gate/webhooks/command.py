"""``x402gate webhooks --store URL``: how many events wait in the outbox, and the dead ones.

Dead rows are events an endpoint did not accept within the attempts or the age allowed; they
are listed newest first with their endpoint, attempts and last error, so that they can be
looked into (the journal keeps the payment itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from ..errors import ConfigurationError, StoreError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``webhooks`` command to the ``x402gate`` command's subparsers."""
    command = sub.add_parser(
        "webhooks",
        help="show the webhook outbox of a store: events waiting, and dead ones",
        description="How many webhook events wait for delivery, and the newest dead ones.",
    )
    command.add_argument("--store", required=True, help="the store URL the gate writes to")
    command.add_argument("--limit", type=int, default=50, help="dead rows shown (default 50)")
    command.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Print the outbox's state; 1 with a message when the store cannot be read."""
    from ..stores import open_store

    try:
        with open_store(args.store) as store:
            pending = store.outbox_pending()
            dead = store.outbox_dead_rows(max(1, args.limit))
    except (ConfigurationError, StoreError) as exc:
        print(f"x402gate webhooks: {exc}", file=sys.stderr)
        return 1
    rows = [
        {
            "event": entry.event,
            "endpoint": entry.endpoint,
            "attempts": entry.attempts,
            "error": entry.error,
            "died": datetime.fromtimestamp(entry.due, UTC).isoformat(timespec="seconds"),
            "outcome": "" if entry.row is None else entry.row.outcome,
            "amount": "" if entry.row is None else str(entry.row.amount),
        }
        for entry in dead
    ]
    if args.json:
        sys.stdout.write(json.dumps({"pending": pending, "dead": rows}, indent=2) + "\n")
        return 0
    lines = [f"pending: {pending}", f"dead (newest {len(rows)}):"]
    lines += [
        f"  {r['died']}  {r['event']}  {r['endpoint']}  attempts={r['attempts']}  {r['error']}"
        for r in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
