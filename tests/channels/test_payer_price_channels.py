"""Prices that know the payer, paid by payment channels: the 402 advertises the full price as
the voucher's ceiling, and from the payer's fourth request this month the committed charge is
the tier's lower price inside it; the journal and the report agree with the channel."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.analytics import build_report
from x402gate.gate import ChannelSettings
from x402gate.pricing import Tiered
from x402gate.testing.payments import decode_payment_required

from ._kit import DEPOSIT_FLOOR, SdkFacilitator, channel_client

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

FULL, CHEAP = 1_000, 500  # "$0.001", then "$0.0005" from the 4th request of the month


@pytest.fixture
def served(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    tmp_path: Any,
) -> Iterator[tuple[str, PaymentGate]]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

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

    async def paid(request: Request) -> Response:
        return JSONResponse({"content": "PAID"})

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid)]),
        gate=gate,
        routes={"GET /paid": Tiered("$0.001", [(3, "$0.0005")])},
    )
    with serve_in_thread(app) as base_url:
        yield base_url, gate
    gate.close()


def _extra(header: str) -> dict[str, Any]:
    extra: dict[str, Any] = json.loads(base64.b64decode(header))["extra"]
    return extra


async def test_the_discount_lowers_the_charge_inside_the_vouchers_ceiling(
    served: tuple[str, PaymentGate], payer: LocalAccount, test_token: TestToken
) -> None:
    from x402.http.clients import x402_httpx_transport

    base_url, gate = served
    transport = x402_httpx_transport(channel_client(payer, test_token), httpx.AsyncHTTPTransport())
    charged: list[int] = []
    channel_id = ""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60) as plain,
        httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http,
    ):
        for _ in range(5):
            # Every 402 offers the full price: it does not know who will pay.
            quote = await plain.get("/paid")
            offers = decode_payment_required(quote.headers["payment-required"]).accepts
            assert {int(offer.amount) for offer in offers} == {FULL}
            response = await http.get("/paid")
            assert response.status_code == 200, response.text
            extra = _extra(response.headers["payment-response"])
            charged.append(int(extra["chargedAmount"]))
            channel_id = extra["channelState"]["channelId"]
    assert charged == [FULL, FULL, FULL, CHEAP, CHEAP]
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.earned == sum(charged)
    rows = gate.store.journal_rows()
    assert [r.amount for r in rows if r.outcome == "channel_charge"] == charged
    report = build_report(gate.store)
    ((_, figures),) = report.totals.items()
    assert figures.earned == sum(charged) and figures.requests == 5
