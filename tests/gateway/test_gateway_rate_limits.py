"""Rate limits in the gateway file, served on loopback and paid on the local chain: a request
over a route's limit gets a 429 that moved no money, claimed nothing and reached neither the
facilitator's chain nor the upstream; the limits of the file are checked with file and line."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

pytest.importorskip("limits")

from x402gate.gateway import GatewayConfigError, parse_config
from x402gate.protocol import PAYMENT_SIGNATURE
from x402gate.stores import replay_key
from x402gate.testing.burst import requirements_of
from x402gate.testing.fake_llm import FakeLLM
from x402gate.testing.payments import encode_payment, sign_exact_payment

from .conftest import GatewayFactory
from .test_config import BASE, ENV, apply, route

pytestmark = pytest.mark.chain

LIMITED = """\
routes:
  "GET /flat/*":
    upstream: llm
    path: /echo/{*}
    price: $0.01
    rate_limit:
      per_payer: 1 per 3 seconds
  "GET /ip/*":
    upstream: llm
    path: /echo/{*}
    price: $0.01
    rate_limit: 2 per 3 seconds
"""


async def get(url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.get(path, headers=headers or {})


def signed(payer: Any, requirements: Any) -> tuple[dict[str, str], str]:
    payload = sign_exact_payment(payer, requirements)
    return {PAYMENT_SIGNATURE: encode_payment(payload)}, payload.payload["authorization"]["nonce"]


async def test_a_payer_over_a_routes_limit_gets_a_429_that_moves_no_money(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any, pay_to: str
) -> None:
    start = test_token.balance_of(payer.address)
    with gateway(routes=LIMITED) as (url, app):
        requirements = await requirements_of(url, "/flat/a")
        first, _ = signed(payer, requirements)
        assert (await get(url, "/flat/a", first)).status_code == 200
        assert len(llm.requests) == 1
        second, nonce = signed(payer, requirements)
        # Another path under the same route key: the limit is the route's, not the path's.
        limited = await get(url, "/flat/b", second)
        assert limited.status_code == 429, limited.text
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 3
        assert limited.headers["ratelimit-limit"] == "1"
        assert limited.headers["ratelimit-policy"] == "1;w=3"
        assert len(llm.requests) == 1  # the upstream never saw it
        assert test_token.balance_of(payer.address) == start - 10_000
        assert test_token.balance_of(pay_to) == 10_000
        assert not test_token.authorization_state(payer.address, nonce)
        key = replay_key(requirements.network, requirements.asset, payer.address, nonce)
        assert app.gate.store.state(key, time.time()) is None
        await asyncio.sleep(1.1)
        later = await get(url, "/flat/b", second)
        assert later.status_code == 429
        assert int(later.headers["retry-after"]) < retry_after
        await asyncio.sleep(int(later.headers["retry-after"]) + 0.1)
        assert (await get(url, "/flat/b", second)).status_code == 200
        assert test_token.authorization_state(payer.address, nonce)
    assert test_token.balance_of(payer.address) == start - 20_000
    assert len(llm.requests) == 2


async def test_a_client_address_over_a_routes_limit_gets_a_429_before_any_payment(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any
) -> None:
    start = test_token.balance_of(payer.address)
    with gateway(routes=LIMITED) as (url, _):
        requirements = await requirements_of(url, "/ip/a")
        assert (await get(url, "/ip/b")).status_code == 402
        header, nonce = signed(payer, requirements)
        limited = await get(url, "/ip/a", header)
        assert limited.status_code == 429, limited.text
        assert "payment-required" not in limited.headers
        assert limited.headers["ratelimit-limit"] == "2"
        # The gateway trusts 127.0.0.1 as its proxy: a forwarded client counts apart.
        other = await get(url, "/ip/a", {"X-Forwarded-For": "198.51.100.9"})
        assert other.status_code == 402
    assert test_token.balance_of(payer.address) == start
    assert not test_token.authorization_state(payer.address, nonce)
    assert llm.requests == []


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ("rate_limit: lots", "rate_limit.per_ip", "'lots' is not a rate"),
        ("rate_limit:\n  per_payer: 0/minute", "rate_limit.per_payer", "allows no request"),
        ("rate_limit:\n  per_payr: 1/second", "rate_limit.per_payr", "did you mean 'per_payer'"),
        ("rate_limit: {}", "rate_limit", "needs per_ip, per_payer or both"),
    ],
)
def test_a_wrong_rate_limit_is_named_with_file_line_and_field(
    body: str, field: str, fragment: str
) -> None:
    text = apply([route("upstream: anthropic\nprice: $0.01\n" + body)])
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gateway.yaml", env=ENV)
    lines = [line for line in str(caught.value).splitlines() if fragment in line]
    assert lines, str(caught.value)
    assert lines[0].startswith("gateway.yaml:1") or lines[0].startswith("gateway.yaml:2")
    assert f'routes["POST /v1/messages"].{field}: ' in lines[0]


def test_the_gateway_section_takes_the_storage_and_the_strategy() -> None:
    text = BASE.replace(
        "  discovery: true",
        "  discovery: true\n  rate_limit_storage: memcached://x\n  rate_limit_strategy: sliding",
    )
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gateway.yaml", env=ENV)
    assert "gateway.yaml:5: gateway.rate_limit_strategy: " in str(caught.value)
    text = BASE.replace(
        "  discovery: true", "  discovery: true\n  rate_limit_storage: memcached://x"
    )
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gateway.yaml", env=ENV)
    assert "gateway.yaml:4: gateway.rate_limit_storage: " in str(caught.value)
    assert "memcached://" in str(caught.value)
