"""Revenue analytics over the payments journal (:mod:`x402gate.stores.journal`).

:func:`build_report` reads the rows of a window from any store and computes what an operator
asks first: revenue per route, per payer and per day, top payers, refusal and error rates, and
p50/p95 latency. ``x402gate report --store URL`` prints the same report as a table, CSV or JSON
(:mod:`.render`). Amounts stay integers of the asset's atomic units, grouped by network and
asset (never added across assets).

What the figures mean:

* *earned*: money the seller has for the route: ``exact`` payments settled on chain (including
  those topped up to a payer's credit) plus payment-channel charges (vouchers the seller may
  claim). Credit charges are not added again: the money came in with the top-up.
* *credit charged*: what metered requests took from payers' credit.
* *claimed* and *settled* (channels): vouchers claimed on chain, and claimed funds settled to
  the seller.
* *requests*: payment outcomes that moved money (settled, charged, channel charge);
  *refused* and *errors*: refusals and failures; the rates are over all three.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..stores.base import Store
from ..stores.journal import JournalRow

__all__ = ["Figures", "Report", "build_report", "percentile", "summarize"]

EARNED = frozenset({"settled", "channel_charge"})
"""Outcomes whose amount the seller earned."""

SERVED = frozenset({"settled", "charged", "channel_charge"})
"""Outcomes of a request served for money."""


@dataclass(slots=True)
class Figures:
    """The sums of one group of rows (one route, payer or day, one network and asset)."""

    earned: int = 0
    credit_charged: int = 0
    claimed: int = 0
    settled: int = 0
    refunded: int = 0
    requests: int = 0
    refused: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, row: JournalRow) -> None:
        outcome = row.outcome
        if outcome in EARNED:
            self.earned += row.amount
        if outcome == "charged":
            self.credit_charged += row.amount
        elif outcome == "claim":
            self.claimed += row.amount
        elif outcome == "settle":
            self.settled += row.amount
        elif outcome == "refunded":
            self.refunded += row.amount
        elif outcome == "refused":
            self.refused += 1
        elif outcome == "error":
            self.errors += 1
        if outcome in SERVED:
            self.requests += 1
            if row.latency is not None:
                self.latencies.append(row.latency)

    @property
    def attempts(self) -> int:
        return self.requests + self.refused + self.errors

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.attempts if self.attempts else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempts if self.attempts else 0.0

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.latencies, 95)


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


Group = tuple[str, str, str]
"""(name, network, asset): the key of one line of a report table."""


@dataclass(slots=True)
class Report:
    """The figures of one window (``since <= time < until``, wall-clock seconds)."""

    since: float
    until: float
    rows: int = 0
    totals: dict[tuple[str, str], Figures] = field(default_factory=dict)
    by_route: dict[Group, Figures] = field(default_factory=dict)
    by_payer: dict[Group, Figures] = field(default_factory=dict)
    by_day: dict[Group, Figures] = field(default_factory=dict)
    overall: Figures = field(default_factory=Figures)

    def top_payers(self, n: int = 10) -> list[tuple[Group, Figures]]:
        """The ``n`` payers who earned the seller most (ties by payer)."""
        ranked = sorted(self.by_payer.items(), key=lambda item: (-item[1].earned, item[0]))
        return ranked[:n]


def summarize(rows: Iterable[JournalRow], since: float, until: float) -> Report:
    """The report of ``rows`` (already in the window)."""
    report = Report(since=since, until=until)
    groups: dict[str, defaultdict[Group, Figures]] = {
        name: defaultdict(Figures) for name in ("route", "payer", "day")
    }
    totals: defaultdict[tuple[str, str], Figures] = defaultdict(Figures)
    for row in rows:
        report.rows += 1
        report.overall.add(row)
        if not row.network and row.outcome in ("refused", "error"):
            # A malformed payment names no asset: it counts for its route only.
            groups["route"][(row.route, "", "")].add(row)
            continue
        day = dt.datetime.fromtimestamp(row.time, dt.UTC).date().isoformat()
        totals[(row.network, row.asset)].add(row)
        if row.route:  # claims and settlements are per channel, not per route
            groups["route"][(row.route, row.network, row.asset)].add(row)
        if row.payer:
            groups["payer"][(row.payer, row.network, row.asset)].add(row)
        groups["day"][(day, row.network, row.asset)].add(row)
    report.totals = dict(sorted(totals.items()))
    report.by_route = dict(sorted(groups["route"].items()))
    report.by_payer = dict(sorted(groups["payer"].items()))
    report.by_day = dict(sorted(groups["day"].items()))
    return report


def build_report(store: Store, since: float | None = None, until: float | None = None) -> Report:
    """Read the journal of ``store`` over ``[since, until)`` (open ends by default) and
    summarize it."""
    low = float("-inf") if since is None else float(since)
    high = float("inf") if until is None else float(until)
    return summarize(store.journal_rows(low, high), low, high)
