"""The report as text: an aligned table, CSV (one section per block) or JSON.

Amounts are integers of atomic units; JSON gives them as decimal strings so that any
``uint256`` survives a JavaScript reader. Latencies are seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from . import Figures, Group, Report

__all__ = ["FORMATS", "render", "to_data"]

FORMATS = ("table", "csv", "json")

_COLUMNS = (
    "earned",
    "credit_charged",
    "claimed",
    "settled",
    "requests",
    "refused",
    "errors",
    "refusal_rate",
    "error_rate",
    "p50_latency",
    "p95_latency",
)


def _figures(fig: Figures) -> dict[str, Any]:
    return {
        "earned": str(fig.earned),
        "credit_charged": str(fig.credit_charged),
        "claimed": str(fig.claimed),
        "settled": str(fig.settled),
        "requests": fig.requests,
        "refused": fig.refused,
        "errors": fig.errors,
        "refusal_rate": round(fig.refusal_rate, 6),
        "error_rate": round(fig.error_rate, 6),
        "p50_latency": fig.p50,
        "p95_latency": fig.p95,
    }


def _lines(key: str, groups: dict[Group, Figures] | list[tuple[Group, Figures]]) -> list[Any]:
    items = groups.items() if isinstance(groups, dict) else groups
    return [
        {key: name, "network": network, "asset": asset, **_figures(fig)}
        for (name, network, asset), fig in items
    ]


def _edge(value: float) -> float | None:
    return None if math.isinf(value) else value


def to_data(report: Report, top: int = 10) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    return {
        "since": _edge(report.since),
        "until": _edge(report.until),
        "rows": report.rows,
        "overall": _figures(report.overall),
        "totals": [
            {"network": network, "asset": asset, **_figures(fig)}
            for (network, asset), fig in report.totals.items()
        ],
        "by_route": _lines("route", report.by_route),
        "by_payer": _lines("payer", report.by_payer),
        "top_payers": _lines("payer", report.top_payers(top)),
        "by_day": _lines("day", report.by_day),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(title: str, lines: list[dict[str, Any]]) -> str:
    if not lines:
        return f"{title}\n  (none)\n"
    heads = list(lines[0])
    cells = [[_cell(line[h]) for h in heads] for line in lines]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in out) + "\n"


_SECTIONS = (
    ("totals", "Totals"),
    ("by_route", "Revenue per route"),
    ("top_payers", "Top payers"),
    ("by_day", "Revenue per day"),
)


def render(report: Report, fmt: str = "table", top: int = 10) -> str:
    """The report in ``fmt`` (one of :data:`FORMATS`)."""
    data = to_data(report, top)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["section", "name", "network", "asset", *_COLUMNS])
        for key, _ in _SECTIONS:
            for line in data[key]:
                name = next((line[k] for k in ("route", "payer", "day") if k in line), "")
                writer.writerow(
                    [key, name, line["network"], line["asset"]]
                    + ["" if line[c] is None else line[c] for c in _COLUMNS]
                )
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")
    overall = data["overall"]
    head = (
        f"{report.rows} journal rows; {overall['requests']} paid requests, "
        f"{overall['refused']} refused ({overall['refusal_rate']:.2%}), "
        f"{overall['errors']} errors ({overall['error_rate']:.2%}); latency p50 "
        f"{_cell(overall['p50_latency'])} s, p95 {_cell(overall['p95_latency'])} s\n"
    )
    parts = [head]
    for key, title in _SECTIONS:
        parts.append(_table(title, data[key]))
    return "\n".join(parts)
