"""The report's figures equal the chain's: after paid requests on the local chain, the revenue
``x402gate report`` gives per route is what the ERC-20 transfers to the seller add up to."""

from __future__ import annotations

import json
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
from x402gate.cli import main
from x402gate.testing.clients import paying_httpx_client

pytestmark = pytest.mark.chain

PRICES = {"/a": 10_000, "/b": 25_000}
TRANSFER = "0x" + "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _app(gate: PaymentGate) -> PaymentMiddleware:
    async def answer(request: Request) -> JSONResponse:
        return JSONResponse({"path": request.url.path})

    app = Starlette(routes=[StarletteRoute("/a", answer), StarletteRoute("/b", answer)])
    return PaymentMiddleware(app, gate=gate, routes={"GET /a": "$0.01", "GET /b": "$0.025"})


def _chain_transfers_to(chain: Any, token: Any, pay_to: str) -> dict[str, int]:
    """Every ERC-20 transfer to ``pay_to``, by transaction hash, read from the chain's logs."""
    logs = chain.w3.eth.get_logs(
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": token.address,
            "topics": [TRANSFER, None, "0x" + "00" * 12 + pay_to[2:].lower()],
        }
    )
    found: dict[str, int] = {}
    for log in logs:
        tx = "0x" + bytes(log["transactionHash"]).hex().removeprefix("0x")
        found[tx.lower()] = found.get(tx.lower(), 0) + int.from_bytes(bytes(log["data"]), "big")
    return found


async def test_exact_revenue_per_route_equals_the_settled_transfers_on_chain(
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_url = f"sqlite:///{tmp_path / 'shop.db'}"
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    gate = PaymentGate(
        pay_to=pay_to, assets=test_token.asset, facilitator=facilitator, store=store_url
    )
    route_of_tx: dict[str, str] = {}
    try:
        app = _app(gate)
        async with paying_httpx_client(
            payer,
            asset=test_token,
            base_url="http://shop.test",
            transport=httpx.ASGITransport(app=app),
        ) as client:
            for path in ("/a", "/b", "/a", "/a", "/b"):
                response = await client.get(path)
                assert response.status_code == 200, response.text
                receipt = decode_payment_response_header(response.headers["payment-response"])
                route_of_tx[receipt.transaction.lower()] = f"GET {path}"
        # A payment that is refused moves nothing and is counted as a refusal.
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
        ) as plain:
            refused = await plain.get("/a", headers={"PAYMENT-SIGNATURE": "bm90IGpzb24="})
        assert refused.status_code in (400, 402)
    finally:
        gate.close()

    on_chain = _chain_transfers_to(chain, test_token, pay_to)
    assert set(on_chain) == set(route_of_tx)  # every transfer to the seller is one of ours
    expected: dict[str, int] = {}
    for tx, amount in on_chain.items():
        expected[route_of_tx[tx]] = expected.get(route_of_tx[tx], 0) + amount
    assert expected == {"GET /a": 3 * PRICES["/a"], "GET /b": 2 * PRICES["/b"]}

    assert main(["report", "--store", store_url, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    earned = {line["route"]: int(line["earned"]) for line in report["by_route"] if line["network"]}
    assert earned == expected
    (total,) = report["totals"]
    assert int(total["earned"]) == sum(on_chain.values())
    assert total["asset"] == test_token.address.lower() and total["network"] == chain.network
    (top,) = report["top_payers"]
    assert top["payer"] == payer.address.lower() and int(top["earned"]) == sum(on_chain.values())
    assert report["overall"]["requests"] == 5 and report["overall"]["refused"] == 1
    assert report["overall"]["p50_latency"] is not None
