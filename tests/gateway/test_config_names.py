"""The gateway file speaks the settings' vocabulary: misspelt names are named with a suggestion,
and the gate settings' own names (``store_url``, ``network``, ...) are accepted."""

from __future__ import annotations

import pytest

pytest.importorskip("yaml")

from x402gate.gateway.config import GatewayConfigError, parse_config

BASE = """\
pay_to: "0x1111111111111111111111111111111111111111"
accepts:
  - base
facilitator: https://x402.org/facilitator
store: memory://
upstreams:
  api:
    url: https://api.example.com
routes:
  "POST /v1/messages":
    upstream: api
    price: $0.01
"""


def problems(text: str) -> list[str]:
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gateway.yaml", env={})
    return str(caught.value).splitlines()


def test_a_misspelt_route_option_fails_with_the_field_and_a_suggestion() -> None:
    text = BASE.replace("    price: $0.01\n", "    price: $0.01\n    setlement: before\n")
    assert problems(text) == [
        'gateway.yaml:13: routes["POST /v1/messages"].setlement: unknown field '
        "(did you mean 'settlement'?)"
    ]


def test_an_unknown_settings_key_fails_with_a_suggestion() -> None:
    text = BASE.replace("store: memory://", "stor_url: memory://")
    assert problems(text) == ["gateway.yaml:5: stor_url: unknown field (did you mean 'store_url'?)"]


def test_the_settings_names_are_accepted() -> None:
    text = (
        BASE.replace("accepts:\n  - base", "network: base")
        .replace("facilitator:", "facilitator_url:")
        .replace("store:", "store_url:")
        + "gateway:\n  rpc_url: https://node.example\n"
    )
    config = parse_config(text, source="gateway.yaml", env={})
    assert [asset.network for asset in config.assets] == ["eip155:8453"]
    assert config.store == "memory://"
    assert config.facilitator.url == ["https://x402.org/facilitator"]
    assert config.gateway.balance_rpc_url is not None


def test_problems_are_named_as_the_file_writes_them() -> None:
    text = BASE.replace("store: memory://", "store_url: mongodb://db")
    (line,) = problems(text)
    assert line.startswith("gateway.yaml:5: store_url: unknown store URL 'mongodb://db'")
    both = BASE.replace("store: memory://", "store: memory://\nstore_url: memory://")
    assert problems(both) == [
        "gateway.yaml:6: store_url: the same setting as store: write one of them"
    ]
    missing = BASE.replace("accepts:\n  - base\n", "")
    assert "accepts: required, and missing (or write network)" in problems(missing)[0]
