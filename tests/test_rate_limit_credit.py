"""A metered route's per-payer limit also holds for requests served from credit: a payer over
it, presenting its session token, gets a 429 that reserves and spends no credit."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

pytest.importorskip("limits")
pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from x402gate import LocalFacilitator, PaymentGate, RateLimit
from x402gate.asgi import PaymentMiddleware
from x402gate.credit import SESSION_HEADER
from x402gate.demo import serve_in_thread
from x402gate.metering import PerToken, TokenPrice
from x402gate.testing.clients import paying_httpx_client

pytestmark = pytest.mark.chain

PRICES = TokenPrice(input="$1", output="$2", per=1_000)
PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 30}}
CHARGE = 7 * 1_000 + 30 * 2_000


async def test_a_session_token_over_the_payer_limit_spends_no_credit(
    chain: Any, facilitator_account: Any, test_token: Any, payer: Any, pay_to: str, tmp_path: Any
) -> None:
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'ledger.db'}",
        secret=b"k" * 32,
        public_origin="http://llm.test",
    )
    runs: list[str] = []

    async def chat(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse(USAGE)

    route = gate.route(
        PerToken({"gpt-*": PRICES}),
        credit_topup="$0.50",
        rate_limit=RateLimit(per_payer="1 per 3 seconds"),
    )
    app = PaymentMiddleware(
        Starlette(routes=[Route("/v1/chat", chat, methods=["POST"])]),
        gate=gate,
        routes={"POST /v1/chat": route},
    )
    try:
        with serve_in_thread(app) as url:
            async with paying_httpx_client(payer, asset=test_token, base_url=url) as client:
                first = await client.post("/v1/chat", json=PROMPT)
            assert first.status_code == 200, first.text
            token = first.headers[SESSION_HEADER]
            credit = await gate.balance(payer.address)
            assert credit == 500_000 - CHARGE
            async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
                limited = await plain.post("/v1/chat", json=PROMPT, headers={SESSION_HEADER: token})
                assert limited.status_code == 429, limited.text
                assert await gate.balance(payer.address) == credit
                await asyncio.sleep(int(limited.headers["retry-after"]) + 0.1)
                served = await plain.post("/v1/chat", json=PROMPT, headers={SESSION_HEADER: token})
                assert served.status_code == 200, served.text
                assert "payment-response" not in served.headers
    finally:
        gate.close()
        facilitator.close()
    assert runs == ["/v1/chat", "/v1/chat"]
    assert test_token.balance_of(pay_to) == 500_000  # one payment, the rest from credit
