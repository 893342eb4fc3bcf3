"""Chain figures and the voucher path: a voucher on a channel whose mirrored figures are fresh
takes its step without the facilitator; once they are older than ``sync_seconds`` the
facilitator reads the channel again first, and the step taken is still exactly one per voucher.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.gate import ChannelSettings

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, channel_client
from ._kit import decode as _decode

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@contextmanager
def serve_gate(gate: PaymentGate) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread

    async def paid(request: Request) -> Response:
        return JSONResponse({"content": "PAID"})

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.001"}
    )
    with serve_in_thread(app) as base_url:
        yield base_url


@pytest.mark.parametrize("sync_seconds", [60.0, 0.0])
async def test_vouchers_ask_the_facilitator_only_when_the_figures_are_stale(
    sync_seconds: float,
    chain: LocalChain,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    payer: LocalAccount,
    tmp_path: Path,
) -> None:
    from x402.http.clients import x402_httpx_transport

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address,
            min_deposit=DEPOSIT_FLOOR,
            sync_seconds=sync_seconds,
        ),
    )
    n = 5
    states: list[dict[str, Any]] = []
    try:
        with serve_gate(gate) as base_url:
            transport = x402_httpx_transport(
                channel_client(payer, test_token), httpx.AsyncHTTPTransport()
            )
            async with httpx.AsyncClient(
                base_url=base_url, transport=transport, timeout=60
            ) as http:
                for _ in range(n):
                    response = await http.get("/paid")
                    assert response.status_code == 200, response.text
                    states.append(
                        _decode(response.headers["payment-response"])["extra"]["channelState"]
                    )
                    if len(states) == 1:
                        verified_after_deposit = facilitator.verified
        channel_id = states[0]["channelId"]
        stored = gate.store.channel_get(channel_id)
    finally:
        gate.close()
    assert [s["chargedCumulativeAmount"] for s in states] == [
        str(k * PRICE) for k in range(1, n + 1)
    ]
    voucher_verifications = facilitator.verified - verified_after_deposit
    # Fresh figures: no facilitator call per voucher; stale ones: one each, before its step.
    assert voucher_verifications == (0 if sync_seconds else n - 1)
    assert facilitator.settled == 1  # the deposit only
    assert stored is not None and stored.charged == n * PRICE and stored.step is None
    assert channel_contracts.channel(channel_id).balance == stored.balance
