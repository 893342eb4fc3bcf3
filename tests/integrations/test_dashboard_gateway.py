"""The gateway serves the dashboard from its YAML (``gateway.dashboard``), before its route
table: a paid route that covers the dashboard's path does not charge for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from x402gate.demo import serve_in_thread
from x402gate.errors import ConfigurationError
from x402gate.gateway import Gateway, parse_config

from ._dashboard import TOKEN, check_served_dashboard, seed_journal

GATEWAY = """\
gateway:
  startup_checks: "off"
  public_origin: https://gateway.test
  trusted_proxies: ["127.0.0.1"]
  dashboard:
    token: ${{DASHBOARD_TOKEN}}
pay_to: "0x1111111111111111111111111111111111111111"
accepts:
  - network: base-sepolia
facilitator:
  url: http://127.0.0.1:9
store: sqlite:///{tmp}/gateway.db
upstreams:
  api:
    url: http://127.0.0.1:9
routes:
  "GET /*":
    upstream: api
    price: $0.01
"""


def test_the_gateway_serves_the_dashboard(tmp_path: Path) -> None:
    config = parse_config(
        GATEWAY.format(tmp=tmp_path), source="gateway.yaml", env={"DASHBOARD_TOKEN": TOKEN}
    )
    app = Gateway(config)
    try:
        seed = seed_journal(app.gate.store)
        with serve_in_thread(app) as url:
            # The file's public origin is https: the sign-in cookie is Secure.
            check_served_dashboard(url, seed, secure=True)
        # Never charged, though "GET /*" covers its path: the journal holds only the seed.
        kept = sorted(row.id for row in app.gate.store.journal_rows())
        assert kept == sorted(row.id for row in seed.rows)
    finally:
        app.gate.close()


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"gateway.yaml:6: gateway.dashboard.token"
    ) as info:
        parse_config(
            GATEWAY.format(tmp=tmp_path), source="gateway.yaml", env={"DASHBOARD_TOKEN": "short"}
        )
    assert "short" not in str(info.value)  # a secret, even a bad one, is never echoed
