"""A payer over a route's per-payer limit, paying by channel voucher with the official client:
the 429 takes no channel step (the stored channel is unchanged, the facilitator not called) and,
once the window passed, the client's next voucher is taken as the channel's next step."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate, RateLimit
from x402gate.gate import ChannelSettings

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, channel_client, decode

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("limits")


async def test_a_limited_voucher_takes_no_channel_step(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    payer: LocalAccount,
    tmp_path: Any,
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from x402.http.clients import x402_httpx_transport

    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
        ),
    )
    runs: list[str] = []

    async def paid(request: Request) -> JSONResponse:
        runs.append(request.state.payment.payer)
        return JSONResponse({"content": "PAID"})

    limit = RateLimit(per_payer="2 per 3 seconds")
    routes = {"GET /paid": {"price": "$0.001", "rate_limit": limit}}
    app = PaymentMiddleware(Starlette(routes=[Route("/paid", paid)]), gate=gate, routes=routes)
    client = channel_client(payer, test_token)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    try:
        with serve_in_thread(app) as url:
            async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as http:
                for _ in range(2):  # the deposit, then a voucher
                    response = await http.get("/paid")
                    assert response.status_code == 200, response.text
                state = decode(response.headers["payment-response"])["extra"]["channelState"]
                channel_id = state["channelId"]
                calls = (facilitator.verified, facilitator.settled)

                limited = await http.get("/paid")
                assert limited.status_code == 429, limited.text
                assert limited.json()["error"] == "rate_limited"
                stored = gate.store.channel_get(channel_id)
                assert stored is not None
                assert stored.charged == 2 * PRICE
                assert stored.step is None  # no step held for the refused voucher
                assert (facilitator.verified, facilitator.settled) == calls

                await asyncio.sleep(int(limited.headers["retry-after"]) + 0.1)
                response = await http.get("/paid")
                assert response.status_code == 200, response.text
                after = decode(response.headers["payment-response"])["extra"]["channelState"]
                assert after["chargedCumulativeAmount"] == str(3 * PRICE)
    finally:
        gate.close()
    assert runs == [payer.address] * 3
    assert channel_contracts.channel(channel_id).total_claimed == 0
