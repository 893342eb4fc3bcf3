"""The gate's journal: a paid request leaves one row with its transaction, refusals are rows
too but an unpaid flood cannot write more than the per-second budget, and ``journal=False``
writes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.gate.journal import REFUSAL_ROWS_PER_SECOND
from x402gate.testing.clients import paying_httpx_client

pytestmark = pytest.mark.chain


class FrozenClock:
    """A clock that stands still (the refusal budget is per second of it)."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def _served(gate: PaymentGate) -> httpx.ASGITransport:
    async def paid(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
    )
    return httpx.ASGITransport(app=app)


def _gate(chain: Any, facilitator_account: Any, token: Any, pay_to: str, **kw: Any) -> PaymentGate:
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    return PaymentGate(
        pay_to=pay_to, assets=token.asset, facilitator=facilitator, store="memory://", **kw
    )


async def test_a_paid_request_leaves_its_row_and_a_flood_of_refusals_is_bounded(
    chain: Any, facilitator_account: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    import time

    clock = FrozenClock(time.time())
    gate = _gate(chain, facilitator_account, test_token, pay_to, clock=clock)
    transport = _served(gate)
    try:
        async with paying_httpx_client(
            payer, asset=test_token, base_url="http://shop.test", transport=transport
        ) as client:
            response = await client.get("/paid")
        assert response.status_code == 200
        receipt = decode_payment_response_header(response.headers["payment-response"])
        (row,) = gate.store.journal_rows()
        assert (row.outcome, row.route, row.amount) == ("settled", "GET /paid", 10_000)
        assert row.payer == payer.address.lower() and row.transaction == receipt.transaction
        assert row.network == chain.network and row.asset == test_token.address.lower()
        assert row.latency is not None and row.latency >= 0
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as plain:
            for _ in range(REFUSAL_ROWS_PER_SECOND + 20):
                bad = await plain.get("/paid", headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="})
                assert bad.status_code in (400, 402)
            refused = [r for r in gate.store.journal_rows() if r.outcome == "refused"]
            assert len(refused) == REFUSAL_ROWS_PER_SECOND  # the rest of this second dropped
            clock.t += 1.0
            await plain.get("/paid", headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="})
        refused = [r for r in gate.store.journal_rows() if r.outcome == "refused"]
        assert len(refused) == REFUSAL_ROWS_PER_SECOND + 1
        assert refused[0].detail and refused[0].amount == 0
    finally:
        gate.close()


async def test_journal_off_writes_nothing(
    chain: Any, facilitator_account: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    gate = _gate(chain, facilitator_account, test_token, pay_to, journal=False)
    try:
        async with paying_httpx_client(
            payer, asset=test_token, base_url="http://shop.test", transport=_served(gate)
        ) as client:
            assert (await client.get("/paid")).status_code == 200
        assert gate.store.journal_rows() == []
    finally:
        gate.close()
