"""A payment spent on chain between its verification and its settlement: nothing is sent.

The handler of a route settled after the answer runs between the facilitator's verification
and the settlement; here it spends the very authorization it is being paid with (or the money
behind it) before it answers, as a payer or a second facilitator racing the gate would. The
direct settlement path simulates the transfer right before it broadcasts, so each case must end
with a 402 to the client, no transaction from the facilitator's account, and no money moved by
it. The same checks run for the direct path's verification (spent before the request came).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from x402.schemas import PaymentPayload, PaymentRequirements

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain

PRICE = 10_000
_VRS = (
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,"
    "bytes32)"
)

Spend = Callable[[PaymentPayload], None]


def _transfer_call(token: Any, payload: PaymentPayload) -> Any:
    auth = payload.payload["authorization"]
    signature = bytes.fromhex(payload.payload["signature"].removeprefix("0x"))
    return token.contract.get_function_by_signature(_VRS)(
        auth["from"],
        auth["to"],
        int(auth["value"]),
        int(auth["validAfter"]),
        int(auth["validBefore"]),
        bytes.fromhex(auth["nonce"].removeprefix("0x")),
        signature[64],
        signature[:32],
        signature[32:64],
    )


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> Iterator[LocalFacilitator]:
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    yield facilitator
    facilitator.close()


@pytest.fixture
def gate(
    facilitator: LocalFacilitator, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        verify_with_facilitator=True,
    )
    yield gate
    gate.close()


def spenders(chain: Any, test_token: Any, payer: Any, facilitator_account: Any) -> dict[str, Spend]:
    """Ways to spend a payment on chain behind the gate's back."""

    def by_the_payer(payload: PaymentPayload) -> None:
        # The payer submits its own authorization (it has ETH for gas here).
        chain.set_balance(payer.address, 10**18)
        chain.transact(payer, _transfer_call(test_token, payload))

    def by_another_facilitator(payload: PaymentPayload) -> None:
        # Another x402gate facilitator, with a key of its own, settles the same payment.
        other = LocalFacilitator(
            chain.rpc_url, chain.new_account().key.hex(), networks=chain.network
        )
        try:
            settled = asyncio.run(other.settle(payload, payload.accepted))
        finally:
            other.close()
        assert settled.success, settled.error_reason

    def money_moved_away(payload: PaymentPayload) -> None:
        # The authorization stays unused, but the payer's balance no longer covers it.
        chain.set_balance(payer.address, 10**18)
        rest = test_token.balance_of(payer.address) - PRICE + 1
        chain.transact(
            payer, test_token.contract.functions.transfer(chain.new_account().address, rest)
        )

    return {
        "by_the_payer": by_the_payer,
        "by_another_facilitator": by_another_facilitator,
        "money_moved_away": money_moved_away,
    }


SPENDERS = ["by_the_payer", "by_another_facilitator", "money_moved_away"]


def _app(gate: PaymentGate, during: Callable[[], Awaitable[None]], ran: list[int]) -> Any:
    async def paid(request: Request) -> JSONResponse:
        ran.append(1)
        await during()
        return JSONResponse({"secret": "the paid content"})

    return PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
    )


async def _requirements(app: Any) -> PaymentRequirements:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/paid")
    assert response.status_code == 402
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


@pytest.mark.parametrize("how", SPENDERS)
async def test_spent_between_verification_and_settlement_sends_nothing(
    how: str,
    gate: PaymentGate,
    facilitator: LocalFacilitator,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    spend = spenders(chain, test_token, payer, facilitator_account)[how]
    box: dict[str, PaymentPayload] = {}
    ran: list[int] = []

    async def during() -> None:
        await asyncio.to_thread(spend, box["payload"])

    app = _app(gate, during, ran)
    requirements = await _requirements(app)
    box["payload"] = payload = sign_exact_payment(payer, requirements)
    sent_before = chain.tx_count(facilitator.address)
    payee_before = test_token.balance_of(pay_to)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/paid", headers={"PAYMENT-SIGNATURE": encode_payment(payload)})

    assert ran == [1]  # verified, so the handler ran; the spending happened inside it
    assert response.status_code == 402, response.text
    assert "the paid content" not in response.text
    assert chain.tx_count(facilitator.address) == sent_before  # nothing broadcast
    spent_elsewhere = how != "money_moved_away"
    assert test_token.balance_of(pay_to) == payee_before + (PRICE if spent_elsewhere else 0)

    # The facilitator is not stuck: the next payment settles at once, with the next nonce.
    chain.set_balance(payer.address, 0)
    test_token.mint(payer.address, 10 * PRICE)
    ran.clear()

    async def nothing() -> None:
        return None

    app = _app(gate, nothing, ran)
    after = sign_exact_payment(payer, requirements)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/paid", headers={"PAYMENT-SIGNATURE": encode_payment(after)})
    assert response.status_code == 200, response.text
    assert chain.tx_count(facilitator.address) == sent_before + 1


@pytest.mark.parametrize("how", SPENDERS)
async def test_settle_refuses_a_payment_spent_since_verify_without_sending(
    how: str,
    facilitator: LocalFacilitator,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """The facilitator alone: verify says valid, the payment is spent, settle sends nothing and
    names the reason the SDK's scheme names for it."""
    from x402gate.protocol import build_requirements

    requirements = build_requirements(test_token.asset, PRICE, pay_to, 300)
    payload = sign_exact_payment(payer, requirements)
    assert (await facilitator.verify(payload, requirements)).is_valid
    await asyncio.to_thread(spenders(chain, test_token, payer, facilitator_account)[how], payload)
    sent_before = chain.tx_count(facilitator.address)

    verdict = await facilitator.verify(payload, requirements)
    result = await facilitator.settle(payload, requirements)

    assert not verdict.is_valid and not result.success
    expected = (
        "invalid_exact_evm_insufficient_balance"
        if how == "money_moved_away"
        else "invalid_exact_evm_nonce_already_used"
    )
    assert verdict.invalid_reason == expected
    assert result.error_reason == expected
    assert result.transaction == ""
    assert chain.tx_count(facilitator.address) == sent_before
