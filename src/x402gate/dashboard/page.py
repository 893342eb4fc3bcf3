"""The dashboard's HTML: one self-contained page, inline CSS and SVG, no script.

The page's ``Content-Security-Policy`` allows only its own style block (by hash) and posting
its form to itself; nothing is loaded from anywhere. Amounts are integers of the asset's atomic
units, as in ``x402gate report``; every figure cell carries a ``data-figure`` attribute naming
it, so that scripts and tests can read the page without parsing its layout.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections import defaultdict
from html import escape
from typing import TYPE_CHECKING

from . import DashboardAnswer

if TYPE_CHECKING:
    from ..analytics import Figures, Group, Report

__all__ = ["CSP", "answer", "message", "render", "sign_in"]

_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;"
    "color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}"
    "table{border-collapse:collapse;width:100%}th,td{padding:.25em .6em;text-align:right;"
    "border-bottom:1px solid #ddd;white-space:nowrap}th:first-child,td:first-child{text-align:left}"
    "td:first-child{font-family:monospace;overflow:hidden;text-overflow:ellipsis;max-width:24em}"
    "dl{display:flex;flex-wrap:wrap;gap:1.5em}dt{color:#666;font-size:.85em}dd{margin:0;"
    "font-size:1.3em}svg{width:100%;height:auto;max-height:12em;background:#fafafa}"
    ".bar{fill:#3b7dd8}.req{fill:#999}.err{fill:#d9534f}.axis{font-size:10px;fill:#666}"
    ".wrap{overflow-x:auto}form{margin-top:2em}input{font-size:1em;padding:.3em}.note{color:#a00}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""Nothing but the page's own style block; the form posts to the page."""

_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


def answer(status: int, html: str, *, head: bool = False, allow: bool = False) -> DashboardAnswer:
    """``html`` as a complete answer with the page's security headers."""
    body = html.encode()
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
    headers += _HEADERS
    if allow:
        headers.append(("Allow", "GET, HEAD, POST"))
    return DashboardAnswer(status, headers, b"" if head else body)


def _document(title: str, content: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{content}</body></html>"
    )


def message(text: str) -> str:
    """A page that only says ``text``."""
    return _document("x402gate dashboard", f"<h1>{escape(text)}</h1>")


def sign_in(path: str, note: str) -> str:
    """The one-field sign-in form (posts to the page itself)."""
    warning = f'<p class="note" id="note">{escape(note)}</p>' if note else ""
    return _document(
        "x402gate dashboard: sign in",
        "<h1>x402gate dashboard</h1>"
        f'{warning}<form method="post" action="{escape(path)}" id="sign-in">'
        '<label>Token <input type="password" name="token" id="token" required '
        'autocomplete="current-password"></label> <button type="submit">Sign in</button></form>',
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_COLUMNS = (
    ("earned", "earned"),
    ("credit_charged", "credit charged"),
    ("claimed", "claimed"),
    ("settled", "settled"),
    ("requests", "requests"),
    ("refused", "refused"),
    ("errors", "errors"),
    ("refusal_rate", "refusal rate"),
    ("error_rate", "error rate"),
    ("p50", "p50 s"),
    ("p95", "p95 s"),
)


def _values(fig: Figures) -> dict[str, object]:
    return {
        "earned": fig.earned,
        "credit_charged": fig.credit_charged,
        "claimed": fig.claimed,
        "settled": fig.settled,
        "requests": fig.requests,
        "refused": fig.refused,
        "errors": fig.errors,
        "refusal_rate": f"{fig.refusal_rate:.2%}",
        "error_rate": f"{fig.error_rate:.2%}",
        "p50": fig.p50,
        "p95": fig.p95,
    }


def _table(ident: str, title: str, head: str, lines: list[tuple[Group, Figures]]) -> str:
    out = [f'<h2>{escape(title)}</h2><div class="wrap"><table id="{ident}"><thead><tr>']
    out.append(f"<th>{escape(head)}</th>")
    out.append("<th>network</th><th>asset</th>")
    out += [f"<th>{escape(label)}</th>" for _, label in _COLUMNS]
    out.append("</tr></thead><tbody>")
    if not lines:
        out.append(f'<tr><td colspan="{len(_COLUMNS) + 3}">none</td></tr>')
    for (name, network, asset), fig in lines:
        values = _values(fig)
        out.append(
            f'<tr data-name="{escape(name)}"><td title="{escape(name)}">{escape(name) or "-"}</td>'
            f'<td>{escape(network)}</td><td title="{escape(asset)}">{escape(_short(asset))}</td>'
        )
        out += [f'<td data-figure="{key}">{escape(_cell(values[key]))}</td>' for key, _ in _COLUMNS]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _short(asset: str) -> str:
    return asset if len(asset) <= 14 else f"{asset[:6]}…{asset[-4:]}"


def _day_list(report: Report, days: int) -> list[str]:
    """Every UTC day the window touches (its first and last partly): ``days`` + 1 at most."""
    last = dt.datetime.fromtimestamp(report.until, dt.UTC).date()
    first = dt.datetime.fromtimestamp(report.since, dt.UTC).date()
    count = min((last - first).days, days)
    return [(last - dt.timedelta(days=n)).isoformat() for n in range(count, -1, -1)]


def _chart(ident: str, title: str, series: list[tuple[str, list[int]]], days: list[str]) -> str:
    """A bar chart of one or more stacked integer series per day, as one inline SVG."""
    width, height, left, bottom = 600, 140, 50, 18
    totals = [sum(values[i] for _, values in series) for i in range(len(days))]
    peak = max(totals, default=0) or 1
    step = (width - left) / max(1, len(days))
    bar = max(step * 0.8, 0.5)
    paths = []
    for j, (css, values) in enumerate(series):
        parts = []
        for i, value in enumerate(values):
            if value <= 0:
                continue
            below = sum(other[i] for _, other in series[:j])
            base = height - bottom - (below / peak) * (height - bottom - 6)
            top = base - (value / peak) * (height - bottom - 6)
            parts.append(f"M{left + i * step:.1f} {base:.1f}V{top:.1f}h{bar:.1f}V{base:.1f}z")
        if parts:
            paths.append(f'<path class="{css}" d="{"".join(parts)}"/>')
    first, last = (days[0], days[-1]) if days else ("", "")
    return (
        f'<h2>{escape(title)}</h2><svg id="{ident}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" data-peak="{max(totals, default=0)}" '
        f'data-total="{sum(totals)}">'
        f'<text class="axis" x="2" y="12">{max(totals, default=0)}</text>'
        f'<text class="axis" x="2" y="{height - bottom}">0</text>'
        f'<text class="axis" x="{left}" y="{height - 4}">{first}</text>'
        f'<text class="axis" x="{width}" y="{height - 4}" text-anchor="end">{last}</text>'
        f"{''.join(paths)}</svg>"
    )


def render(report: Report, *, days: int, top: int, path: str) -> str:
    """The dashboard page of ``report`` (a window of ``days`` days)."""
    overall = _values(report.overall)
    facts = [
        ("rows", "journal rows", report.rows),
        ("requests", "paid requests", overall["requests"]),
        ("refused", "refused", overall["refused"]),
        ("refusal_rate", "refusal rate", overall["refusal_rate"]),
        ("errors", "errors", overall["errors"]),
        ("error_rate", "error rate", overall["error_rate"]),
        ("p50", "p50 latency s", overall["p50"]),
        ("p95", "p95 latency s", overall["p95"]),
    ]
    summary = "".join(
        f'<div><dt>{escape(label)}</dt><dd data-figure="{key}">{escape(_cell(value))}</dd></div>'
        for key, label, value in facts
    )
    day_names = _day_list(report, days)
    index = {day: i for i, day in enumerate(day_names)}
    revenue: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(day_names))
    served, failed = [0] * len(day_names), [0] * len(day_names)
    for (day, network, asset), fig in report.by_day.items():
        i = index.get(day)
        if i is None:
            continue
        revenue[(network, asset)][i] += fig.earned
        served[i] += fig.requests
        failed[i] += fig.refused + fig.errors
    charts = [
        _chart(
            f"chart-revenue-{n}",
            f"Revenue per day ({network} {_short(asset)}, atomic units)",
            [("bar", values)],
            day_names,
        )
        for n, ((network, asset), values) in enumerate(sorted(revenue.items()))
    ]
    if not charts:
        charts.append(_chart("chart-revenue-0", "Revenue per day", [("bar", [])], day_names))
    charts.append(
        _chart(
            "chart-requests",
            "Requests per day (grey: paid, red: refused or failed)",
            [("req", served), ("err", failed)],
            day_names,
        )
    )
    totals = [(("all", network, asset), fig) for (network, asset), fig in report.totals.items()]
    content = (
        f"<h1>x402gate dashboard</h1><p>Last {days} days (UTC), amounts in the asset's atomic "
        f'units. <a href="{escape(path)}?format=json&amp;days={days}">JSON</a></p>'
        f'<dl id="overall">{summary}</dl>'
        + "".join(charts)
        + _table("totals", "Totals", "", totals)
        + _table("routes", "Revenue per route", "route", list(report.by_route.items()))
        + _table("payers", f"Top {top} payers", "payer", report.top_payers(top))
        + _table("days", "Revenue per day", "day", list(reversed(report.by_day.items())))
    )
    return _document("x402gate dashboard", content)
