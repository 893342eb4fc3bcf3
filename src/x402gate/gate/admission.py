"""Payments in flight per payer: a payment's amount is held on the payer's balance from its
verification until it settles, so a wallet that can pay ``K`` times never gets more than ``K``
handler runs however many authorizations it signs at once (``limit_in_flight``).

The bound lives in the store, so it holds across threads, processes and instances.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FacilitatorError, StoreError
from ..stores.base import IN_FLIGHT_UNSETTLED, credit_account
from .events import EventKind, PaymentEvent
from .failures import failure
from .model import PaymentSession

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from .engine import PaymentGate

__all__ = [
    "IN_FLIGHT_GRACE_SECONDS",
    "SETTLED_IN_FLIGHT_SECONDS",
    "admit",
    "release_in_flight",
    "settle_in_flight",
    "store_call_quietly",
    "unknown_outcome_in_flight",
]

logger = logging.getLogger("x402gate")

SETTLED_IN_FLIGHT_SECONDS = 120
"""How long a settled payment keeps counting against balance readings of earlier blocks (cached
or from a lagging node); past it every reading in use is newer than the settlement."""
IN_FLIGHT_GRACE_SECONDS = 60
"""How long past its ``validBefore`` an unsettled payment's hold lasts (clock skew): a process
that died mid-request never locks its payer's balance longer than this."""


async def admit(
    gate: PaymentGate, session: PaymentSession, accepts: Sequence[PaymentRequirements]
) -> None:
    """Hold this payment's amount on the payer's balance, or refuse it (releasing the claim)
    when the balance does not cover it plus the payer's other payments in flight."""
    payment, request, route = session.payment, session.request, session.route
    account = credit_account(payment.network, payment.asset.address, payment.payer)
    entry = secrets.token_hex(16)
    try:
        reading = await gate.balances.read(payment.asset, payment.payer)
        if reading is None:
            # No node to read from: the facilitator's verify vouches for this one payment
            # only, so the payer may have nothing else in flight.
            balance, block = payment.amount, 0
        else:
            balance, block = reading.balance, reading.block
        admitted = balance >= payment.amount and await gate._store_call(
            gate.store.in_flight_admit,
            account,
            entry,
            payment.amount,
            balance,
            block,
            payment.valid_before + IN_FLIGHT_GRACE_SECONDS,
            gate.clock.now(),
        )
    except (StoreError, FacilitatorError) as exc:
        logger.error("payments in flight could not be checked: %s", exc)
        await gate._release(session)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, payment, code="in_flight"))
        raise failure(exc) from None
    if admitted:
        session.in_flight = (account, entry)
        session.on_chain = reading is not None
        return
    await gate._release(session)
    headers = {"Cache-Control": "no-store"}
    if balance < payment.amount:
        code, message = "insufficient_funds", "the payer's balance does not cover this payment"
    else:
        # Retryable: the hold ends when the payer's earlier payments settle or fail.
        code, message = (
            "payments_in_flight",
            "the payer's balance is held by its payments in flight; retry shortly",
        )
        headers["Retry-After"] = "1"
    await gate._emit(
        PaymentEvent(EventKind.REJECTED, request, route, payment, code=code, status=402)
    )
    raise gate._challenge(route, request, accepts, code, message, extra_headers=headers)


async def release_in_flight(gate: PaymentGate, session: PaymentSession) -> None:
    held, session.in_flight = session.in_flight, None
    if held is None:
        return
    try:
        await gate._store_call(gate.store.in_flight_release, *held)
    except StoreError as exc:
        # Fails safe: the hold only makes the payer wait until it expires.
        logger.error("payment in flight could not be released: %s", exc)


async def settle_in_flight(gate: PaymentGate, session: PaymentSession) -> None:
    held, session.in_flight = session.in_flight, None
    if held is None:
        return
    payment = session.payment
    if not session.on_chain:
        # The facilitator vouched for the balance after its own settlement: nothing to keep.
        await gate._store_call_quietly(gate.store.in_flight_release, *held)
        return
    # The payer's cached balance reading is kept: it is of an earlier block than this
    # settlement, so the hold below keeps counting against it until it is replaced (at most
    # balance_cache_seconds later). Dropping it would make the payer's next request read the
    # chain again (two round trips) for the same answer.
    block: int | None = None
    if payment.transaction:
        # The facilitator that just saw the receipt knows its block: no round trip for it.
        block = _block_known_to(gate.facilitator, payment.transaction)
        if block is None:
            try:
                block = await gate.balances.settlement_block(payment.network, payment.transaction)
            except FacilitatorError as exc:
                logger.warning("settlement block unknown, the hold stays until it lapses: %s", exc)
    # Readings of earlier blocks still show the money: the payment counts against them.
    until = IN_FLIGHT_UNSETTLED if block is None else block
    now = gate.clock.now()
    await gate._store_call_quietly(
        gate.store.in_flight_settle, *held, until, now + SETTLED_IN_FLIGHT_SECONDS, now
    )


def _block_known_to(facilitator: Any, transaction: str) -> int | None:
    from ..facilitators import LocalFacilitator

    if isinstance(facilitator, LocalFacilitator):
        return facilitator.settlement_block(transaction)
    return None


async def unknown_outcome_in_flight(gate: PaymentGate, session: PaymentSession) -> None:
    # Read on chain, the payment keeps its hold until its authorization lapses: the money
    # may still move, and a balance reading cannot see a transaction not yet mined. Vouched
    # for by the facilitator, the next payment's verify is the judge of the balance.
    if not session.on_chain:
        await gate._release_in_flight(session)


async def store_call_quietly(gate: PaymentGate, fn: Callable[..., Any], *args: Any) -> None:
    try:
        await gate._store_call(fn, *args)
    except StoreError as exc:
        # Only ever leaves a hold in place until it expires: the payer waits, nobody gains.
        logger.error("payment in flight could not be updated: %s", exc)
