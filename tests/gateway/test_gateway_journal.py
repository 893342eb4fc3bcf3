"""The gateway keeps the payments journal: after paid calls through it, ``x402gate report`` on
its store gives the revenue the chain shows, and the YAML retention reaches the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.cli import main
from x402gate.stores.journal import JournalRetention
from x402gate.testing.clients import paying_httpx_client

from .conftest import GatewayFactory

pytestmark = pytest.mark.chain

PRICE = 10_000  # "GET /flat/*" costs $0.01


async def test_paid_calls_through_the_gateway_are_in_its_report(
    gateway: GatewayFactory,
    payer: Any,
    test_token: Any,
    pay_to: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = test_token.balance_of(pay_to)
    with gateway() as (url, app):
        assert app.gate.store.journal_retention == JournalRetention(days=400.0, rows=None)
        async with paying_httpx_client(payer, asset=test_token, base_url=url) as client:
            for n in range(3):
                response = await client.get(f"/flat/call-{n}")
                assert response.status_code == 200, response.text
        async with httpx.AsyncClient(base_url=url) as plain:
            assert (await plain.get("/flat/unpaid")).status_code == 402
    moved = test_token.balance_of(pay_to) - before
    assert moved == 3 * PRICE
    assert main(["report", "--store", f"sqlite:///{tmp_path}/gateway.db", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (total,) = report["totals"]
    assert int(total["earned"]) == moved and total["requests"] == 3
    # The route is named by its key in the gateway file, not by each path it matched.
    routes = {line["route"]: int(line["earned"]) for line in report["by_route"] if line["asset"]}
    assert routes == {"GET /flat/*": 3 * PRICE}


def test_the_yaml_sets_the_retention(gateway_yaml: Any) -> None:
    from x402gate.gateway import Gateway, parse_config

    text, env = gateway_yaml()
    text = text.replace(
        "gateway:\n", "gateway:\n  journal_retention_days: 30\n  journal_retention_rows: 500\n", 1
    )
    app = Gateway(parse_config(text, source="gateway.yaml", env=env))
    try:
        assert app.gate.store.journal_retention == JournalRetention(days=30, rows=500)
        assert app.gate.journal is True
    finally:
        app.gate.close()
