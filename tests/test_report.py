"""``x402gate report``: the figures of a seeded journal in each format, over a window."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from x402gate.analytics import build_report, percentile
from x402gate.analytics.command import parse_when
from x402gate.cli import main
from x402gate.stores import open_store
from x402gate.stores.journal import JournalRow

DAY = 86400.0
T0 = 1_764_547_200.0  # 2025-12-01T00:00:00Z
USDC, NET = "0x" + "aa" * 20, "eip155:8453"
ALICE, BOB = "0x" + "a1" * 20, "0x" + "b0" * 20


def _row(
    n: int, time: float, route: str, payer: str, amount: int, outcome: str, **kw: object
) -> JournalRow:
    return JournalRow(
        id=f"r{n}",
        time=time,
        route=route,
        payer=payer,
        amount=amount,
        asset=USDC,
        network=NET,
        outcome=outcome,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    rows = [
        _row(1, T0 + 10, "GET /a", ALICE, 1_000, "settled", latency=0.1),
        _row(2, T0 + 20, "GET /a", BOB, 1_000, "settled", latency=0.3),
        _row(3, T0 + DAY + 5, "GET /b", ALICE, 5_000, "settled", latency=0.2),
        _row(4, T0 + DAY + 6, "GET /b", ALICE, 700, "channel_charge", latency=0.05),
        _row(5, T0 + DAY + 7, "GET /b", ALICE, 300, "charged", latency=0.4),
        _row(6, T0 + DAY + 8, "GET /a", BOB, 1_000, "refused", detail="invalid_signature"),
        _row(7, T0 + 2 * DAY, "GET /a", "", 0, "error", detail="settle"),
        _row(8, T0 + 2 * DAY + 1, "", ALICE, 600, "claim", transaction="0x01"),
    ]
    with open_store(url) as store:
        for row in rows:
            assert store.journal_append(row)
    return url


def test_the_report_sums_what_the_journal_holds(store_url: str) -> None:
    with open_store(store_url) as store:
        report = build_report(store)
    (total,) = report.totals.values()
    # Earned: settled payments and channel charges; credit charges were paid by the top-up.
    assert total.earned == 1_000 + 1_000 + 5_000 + 700
    assert total.credit_charged == 300 and total.claimed == 600
    assert report.by_route[("GET /a", NET, USDC)].earned == 2_000
    assert report.by_route[("GET /b", NET, USDC)].earned == 5_700
    assert [key[0] for key, _ in report.top_payers(1)] == [ALICE]
    assert report.by_day[("2025-12-02", NET, USDC)].earned == 5_700
    overall = report.overall
    assert (overall.requests, overall.refused, overall.errors) == (5, 1, 1)
    assert overall.refusal_rate == pytest.approx(1 / 7)
    assert (overall.p50, overall.p95) == (0.2, 0.4)


def test_the_report_command_prints_each_format_over_a_window(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--store", store_url]) == 0
    table = capsys.readouterr().out
    assert "Revenue per route" in table and "GET /b" in table and "5700" in table

    window = ["--since", "2025-12-02", "--until", "2025-12-03"]
    assert main(["report", "--store", store_url, "--format", "json", *window]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [line["day"] for line in data["by_day"]] == ["2025-12-02"]
    assert [(line["route"], line["earned"]) for line in data["by_route"]] == [
        ("GET /a", "0"),
        ("GET /b", "5700"),
    ]
    assert data["since"] == T0 + DAY and data["until"] == T0 + 2 * DAY

    assert main(["report", "--store", store_url, "--format", "csv"]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    routes = {line["name"]: line["earned"] for line in lines if line["section"] == "by_route"}
    assert routes == {"GET /a": "2000", "GET /b": "5700"}


def test_an_unreadable_store_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--store", f"sqlite:///{tmp_path}/missing/x.db"]) == 1
    assert "x402gate report:" in capsys.readouterr().err


def test_times_and_percentiles() -> None:
    assert parse_when("2025-12-01") == T0
    assert parse_when("30d", now=T0 + 30 * DAY) == T0
    assert parse_when(str(T0)) == T0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 95) == 4.0
