"""Every :class:`~x402gate.EventKind` the gate emits, each seen in a real flow.

The facilitator is a stub and the store is in memory (no chain): the flows are the gate's own,
from ``begin`` to ``finish``/``complete``/``abort``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from eth_account import Account
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402gate import EventKind, PaymentError, PaymentEvent, PaymentGate, PerSecond
from x402gate.assets import Asset
from x402gate.errors import FacilitatorUnavailable, StoredAnswer
from x402gate.reconcile import ChainReconciler, OnChainTransfer
from x402gate.request import RequestInfo
from x402gate.testing.payments import encode_payment, sign_exact_payment

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address
PAYMENT_ID = "pay_0123456789abcdef"
TRANSACTION = "0x" + "cd" * 32


class StubFacilitator:
    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(
            success=True, transaction="0x" + "ab" * 32, network=requirements.network
        )


def make_gate(**kw: Any) -> PaymentGate:
    kw.setdefault("facilitator", StubFacilitator())
    return PaymentGate(pay_to=PAY_TO, store="memory://", assets=ASSET, **kw)


def request(headers: dict[str, str] | None = None) -> RequestInfo:
    return RequestInfo("GET", "/paid", headers=headers or {}, url="https://api.test/paid")


def listen(gate: PaymentGate) -> list[PaymentEvent]:
    seen: list[PaymentEvent] = []
    gate.on_event(seen.append)
    return seen


async def pay(
    gate: PaymentGate, route: Any, payer: Any = None, payment_id: str | None = None
) -> RequestInfo:
    (req,) = await gate.requirements(route, request())
    payload = sign_exact_payment(
        payer or Account.create(), req, valid_before=int(time.time()) + 200
    )
    if payment_id is not None:
        payload = payload.model_copy(
            update={"extensions": {"payment-identifier": {"info": {"id": payment_id}}}}
        )
    return request({"PAYMENT-SIGNATURE": encode_payment(payload)})


def kinds(seen: list[PaymentEvent]) -> list[str]:
    return [event.kind for event in seen]


def test_kinds_are_strings_and_the_enum_is_complete() -> None:
    kind: str = EventKind.CHARGED  # listeners comparing with plain strings keep working
    assert kind == "charged" and EventKind("charged") is EventKind.CHARGED
    assert {k.value for k in EventKind} == {
        "challenged",
        "rejected",
        "verified",
        "settled",
        "settle_failed",
        "released",
        "recovered",
        "replayed",
        "charged",
        "refunded",
        "error",
    }


async def test_challenged_verified_settled() -> None:
    gate = make_gate()
    seen = listen(gate)
    route = gate.route("$0.01")
    with pytest.raises(PaymentError):
        await gate.begin(route, request())
    session = await gate.begin(route, await pay(gate, route))
    await gate.finish(session, 200)
    assert kinds(seen) == ["challenged", "verified", "settled"]
    assert all(isinstance(event.kind, EventKind) for event in seen)
    assert seen[0].status == 402 and seen[2].payment is session.payment
    assert session.payment.transaction is not None


async def test_rejected_carries_the_code_and_status() -> None:
    gate = make_gate()
    seen = listen(gate)
    route = gate.route("$0.01")
    with pytest.raises(PaymentError):
        await gate.begin(route, request({"PAYMENT-SIGNATURE": "not base64 json"}))
    assert kinds(seen) == ["rejected"]
    assert seen[0].status == 400 and seen[0].code


async def test_released_when_the_handler_fails() -> None:
    gate = make_gate()
    seen = listen(gate)
    route = gate.route("$0.01")
    session = await gate.begin(route, await pay(gate, route))
    assert await gate.finish(session, 500) == {}
    assert kinds(seen) == ["verified", "released"]


class RefusingFacilitator(StubFacilitator):
    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(
            success=False,
            error_reason="insufficient_funds",
            transaction="",
            network=requirements.network,
        )


async def test_settle_failed_and_released_when_settlement_is_refused() -> None:
    gate = make_gate(facilitator=RefusingFacilitator())
    seen = listen(gate)
    route = gate.route("$0.01")
    session = await gate.begin(route, await pay(gate, route))
    with pytest.raises(PaymentError) as info:
        await gate.finish(session, 200)
    assert info.value.status_code == 402
    assert kinds(seen) == ["verified", "released", "settle_failed"]
    assert seen[-1].code == "insufficient_funds" and seen[-1].status == 402


class UnreachableFacilitator(StubFacilitator):
    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        raise FacilitatorUnavailable("connection refused")


async def test_error_names_the_failed_step() -> None:
    gate = make_gate(facilitator=UnreachableFacilitator())
    seen = listen(gate)
    route = gate.route("$0.01")
    session = await gate.begin(route, await pay(gate, route))
    with pytest.raises(PaymentError) as info:
        await gate.finish(session, 200)
    assert info.value.status_code == 503
    assert kinds(seen) == ["verified", "error"] and seen[-1].code == "settle"


async def test_replayed_carries_the_stored_status() -> None:
    gate = make_gate()
    seen = listen(gate)
    route = gate.route("$0.01")
    paid = await pay(gate, route, payment_id=PAYMENT_ID)
    session = await gate.begin(route, paid)
    await gate.finish(session, 201, recording=True)
    await gate.record(session, 201, [("Content-Type", "text/plain")], b"made")
    with pytest.raises(StoredAnswer) as info:
        await gate.begin(route, paid)
    assert info.value.status_code == 201
    assert kinds(seen) == ["verified", "settled", "replayed"] and seen[-1].status == 201


def metered_gate() -> tuple[PaymentGate, Any]:
    gate = make_gate(public_origin="https://api.test")
    return gate, gate.route(PerSecond("$0.001", max_seconds=60))


async def test_charged_carries_the_amount_never_a_status() -> None:
    gate, route = metered_gate()
    seen = listen(gate)
    session = await gate.begin(route, await pay(gate, route))
    await gate.finish(session, 200)
    gate.hold_commit(session)
    charge = await gate.complete(session)
    assert kinds(seen) == ["verified", "settled", "charged"]
    assert seen[-1].amount == charge and seen[-1].status is None
    assert 0 <= charge <= session.quote


async def test_refunded_when_a_metered_answer_fails_after_settling() -> None:
    gate, route = metered_gate()
    seen = listen(gate)
    session = await gate.begin(route, await pay(gate, route))
    await gate.finish(session, 200)
    await gate.abort(session)  # the answer failed: the reservation goes back, uncharged
    assert kinds(seen) == ["verified", "settled", "refunded"]
    assert seen[-1].amount is None


class FoundOnChain(ChainReconciler):
    """Reads no chain: every authorization's transfer is found, mined long ago."""

    async def find_transfer(self, **kwargs: Any) -> OnChainTransfer:
        return OnChainTransfer(TRANSACTION, block=1, mined_at=0, age=3600)


async def test_recovered_when_a_retry_finds_the_payment_on_chain() -> None:
    gate = make_gate(
        facilitator=UnreachableFacilitator(),
        reconcile=FoundOnChain("http://127.0.0.1:1", min_interval_seconds=0.001),
    )
    seen = listen(gate)
    route = gate.route("$0.01")
    paid = await pay(gate, route)
    first = await gate.begin(route, paid)
    with pytest.raises(PaymentError):  # the outcome of the settlement is unknown
        await gate.finish(first, 200)
    retry = await gate.begin(route, paid)  # the transfer is on chain: served, not settled
    assert retry.recovered and retry.payment.transaction == TRANSACTION
    await gate.finish(retry, 200)
    assert kinds(seen) == ["verified", "error", "recovered", "settled"]
