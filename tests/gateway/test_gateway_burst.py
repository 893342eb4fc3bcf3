"""The gateway in front of the fake LLM provider: a wallet that can pay K times sends 50 paid
requests at once, each with its own authorization. The operator pays the upstream per call, so
what counts is how many calls reach it: at most K, each one paid on chain."""

from __future__ import annotations

from typing import Any

import pytest

from x402gate.testing.burst import requirements_of, send_burst
from x402gate.testing.fake_llm import FakeLLM

from .conftest import GatewayFactory

pytestmark = pytest.mark.chain

PRICE = 10_000  # "GET /flat/*" costs $0.01
K = 3
BURST = 50
OFF = "gateway:\n  limit_in_flight: false\n"


def upstream_calls(llm: FakeLLM) -> int:
    return sum(1 for r in llm.requests if r.path.startswith("/echo/"))


async def test_a_burst_reaches_the_upstream_at_most_as_often_as_the_wallet_can_pay(
    gateway: GatewayFactory, llm: FakeLLM, chain: Any, test_token: Any, pay_to: str
) -> None:
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    with gateway() as (url, _):
        requirements = await requirements_of(url, "/flat/burst")
        assert int(requirements.amount) == PRICE
        result = await send_burst(url, "/flat/burst", payer, requirements, BURST)
    settled = result.settled(test_token)
    assert upstream_calls(llm) == settled == result.served == K
    assert test_token.balance_of(pay_to) == K * PRICE
    refusals = result.refusals()
    assert sum(refusals.values()) == BURST - K
    assert {status for status, _ in refusals} == {402}, refusals
    assert {code for _, code in refusals} <= {"payments_in_flight", "insufficient_funds"}


async def test_with_the_bound_off_the_operator_pays_for_upstream_calls_nobody_paid(
    gateway_yaml: Any, llm: FakeLLM, chain: Any, test_token: Any, pay_to: str
) -> None:
    from x402gate.gateway import Gateway, parse_config

    from .conftest import serve_gateway

    text, env = gateway_yaml()
    text = text.replace("gateway:\n", OFF, 1)
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    app = Gateway(parse_config(text, source="gateway.yaml", env=env))
    assert app.gate.limit_in_flight is False
    with serve_gateway(app) as url:
        requirements = await requirements_of(url, "/flat/burst")
        result = await send_burst(url, "/flat/burst", payer, requirements, BURST)
    assert result.settled(test_token) == K
    assert upstream_calls(llm) > K
