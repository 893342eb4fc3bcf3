"""Prices that know the payer, on the local chain: after N paid requests this month the
payer's session token gets the lower price quoted, and the chain moves exactly that."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.credit import SESSION_HEADER
from x402gate.pricing import PayerSummary, Tiered
from x402gate.request import RequestInfo
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.payments import decode_payment_required

pytestmark = pytest.mark.chain

FULL, CHEAP = 10_000, 5_000  # $0.01, then $0.005 after 3 paid requests this month


def test_tiers_lower_the_price_and_never_raise_it() -> None:
    price = Tiered("$0.01", [(3, "$0.005"), (10, "$0.002")])
    request = RequestInfo("GET", "/weather")
    assert price.quote(request) == FULL
    assert price.quote_for(request, None) == FULL
    assert price.quote_for(request, PayerSummary("0xa", 2, 0, 0.0)) == FULL
    assert price.quote_for(request, PayerSummary("0xa", 3, 0, 0.0)) == CHEAP
    assert price.quote_for(request, PayerSummary("0xa", 12, 0, 0.0)) == 2_000


async def test_the_payer_is_quoted_less_after_three_paid_requests(
    chain: Any, facilitator_account: Any, test_token: Any, payer: Any, pay_to: str, tmp_path: Any
) -> None:
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'shop.db'}",
        secret="a test secret of enough length for tokens",
        public_origin="http://shop.test",  # session tokens are issued for it
    )

    async def weather(request: Request) -> JSONResponse:
        return JSONResponse({"forecast": "sunny"})

    app = PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/weather", weather)]),
        gate=gate,
        routes={"GET /weather": Tiered("$0.01", [(3, "$0.005")])},
    )
    transport = httpx.ASGITransport(app=app)
    try:
        paid_before = test_token.balance_of(pay_to)
        token = ""
        async with paying_httpx_client(
            payer, asset=test_token, base_url="http://shop.test", transport=transport
        ) as client:
            for n in range(4):
                headers = {SESSION_HEADER: token} if token else {}
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://shop.test"
                ) as plain:
                    quoted = await plain.get("/weather", headers=headers)
                (offer,) = decode_payment_required(quoted.headers["payment-required"]).accepts
                assert int(offer.amount) == (CHEAP if n == 3 else FULL)
                response = await client.get("/weather", headers=headers)
                assert response.status_code == 200, response.text
                token = response.headers[SESSION_HEADER]
        # Anonymous requests are still quoted the full price.
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as plain:
            anonymous = await plain.get("/weather")
        (offer,) = decode_payment_required(anonymous.headers["payment-required"]).accepts
        assert int(offer.amount) == FULL
    finally:
        gate.close()
    assert test_token.balance_of(pay_to) - paid_before == 3 * FULL + CHEAP
