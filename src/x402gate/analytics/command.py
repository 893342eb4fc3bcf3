"""``x402gate report --store URL [--since --until] [--format table|csv|json]``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from ..errors import ConfigurationError, StoreError
from . import build_report
from .render import FORMATS, render

__all__ = ["add_parser", "parse_when", "run"]


def parse_when(text: str, now: float | None = None) -> float:
    """A time as seconds: ISO 8601 (``2026-12-01``, ``2026-12-01T10:00:00+00:00``; UTC when no
    zone is given), Unix seconds, or an age such as ``30d``, ``12h``, ``15m`` before now."""
    text = text.strip()
    now = time.time() if now is None else now
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (use 2026-12-01, an ISO time, Unix seconds or 30d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` command to the ``x402gate`` command's subparsers."""
    report = sub.add_parser(
        "report",
        help="print revenue, top payers, refusal rates and latency from a store's journal",
        description="Revenue per route, per payer and per day, top payers, refusal and error "
        "rates and p50/p95 latency, from the payments journal of a store.",
    )
    report.add_argument("--store", required=True, help="the store URL the gate writes to")
    report.add_argument(
        "--since", type=parse_when, help="from this time (2026-12-01, ISO time, Unix s, 30d)"
    )
    report.add_argument("--until", type=parse_when, help="up to this time (excluded)")
    report.add_argument("--format", choices=FORMATS, default="table", help="output format")
    report.add_argument("--top", type=int, default=10, help="how many top payers (default 10)")


def run(args: argparse.Namespace) -> int:
    """Print the report; 1 with a message when the store cannot be read."""
    from ..stores import open_store

    try:
        with open_store(args.store) as store:
            report = build_report(store, args.since, args.until)
    except (ConfigurationError, StoreError) as exc:
        print(f"x402gate report: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(report, args.format, max(1, args.top)))
    return 0
