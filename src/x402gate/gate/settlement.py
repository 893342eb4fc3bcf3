"""Settlement and what follows it: settle through the scheme, mark the claim served, and
recover a payment settled on chain whose first answer was lost.

With reconciliation on, a settled claim stays *sending* until the answer was handed to the
server (:func:`delivered`): a request lost before that leaves a claim that a retry of the same
payment takes over once its transfer shows on chain (:func:`recover`), so the buyer gets one
answer for one payment, never two and never none.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .. import protocol
from ..errors import FacilitatorError, PaymentError, StoreError
from ..reconcile import ChainReadError
from ..request import RequestInfo
from . import payer_prices
from .events import EventKind, PaymentEvent
from .failures import failure, safe_code
from .journal import journaled, session_row
from .model import Payment, PaymentSession, Route
from .settled_writes import settled_write

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements, SettleResponse

    from .engine import PaymentGate

__all__ = [
    "GAVE_UP",
    "abandon_recovered",
    "complete_recovery",
    "delivered",
    "give_up",
    "mark_served",
    "record_delivery",
    "recover",
    "settle",
    "start_delivered",
]

logger = logging.getLogger("x402gate")

GAVE_UP = "gave-up:"
"""Prefix of the token a request hands its claim to when it stops waiting for its settlement's
answer: a retry that finds the transfer on chain may then take the claim over at once."""


async def settle(gate: PaymentGate, session: PaymentSession) -> None:
    request, route, payment = session.request, session.route, session.payment
    assert session.payload is not None  # sessions served from credit never settle
    result: SettleResponse | None = None
    try:
        for _ in range(2):
            with gate.telemetry.step("settle", route, "exact") as step:
                result = await gate.scheme.settle(session.payload, session.requirements)
                if not result.success:
                    step.refused(safe_code(result.error_reason, "settlement_failed"))
            # settlement_pending: broadcast but unconfirmed; asking again reconciles the same
            # transaction (the facilitator keys it by signature), it never sends a second one.
            if result.success or result.error_reason != "settlement_pending":
                break
    except FacilitatorError as exc:
        # Outcome unknown: keep the claim held so the authorization cannot be spent twice.
        # A retry of the same payment is served once the transfer shows on chain (_recover),
        # so a payment identifier must not hold it back with a stored "already processed".
        logger.error("settlement failed for %s: %s", request.resource, exc)
        await gate._unknown_outcome_in_flight(session)
        await gate._drop_idempotency(session)
        await gate._give_up(session)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, payment, code="settle"))
        raise failure(exc) from None
    assert result is not None
    # A v1 client gets its receipt in the v1 header and shape, networks by v1 name.
    if session.version == 1:
        header_name, encode = protocol.X_PAYMENT_RESPONSE, protocol.encode_settle_response_v1
    else:
        header_name, encode = protocol.PAYMENT_RESPONSE, protocol.encode_settle_response
    if result.success:
        payment.transaction = result.transaction
        await gate._settle_in_flight(session)
        await gate._mark_served(session)
        session.response_headers = {header_name: encode(result)}
        await gate._emit(PaymentEvent(EventKind.SETTLED, request, route, payment))
        return
    code = safe_code(result.error_reason, "settlement_failed")
    if code == "settlement_pending":
        await gate._drop_idempotency(session)
        await gate._give_up(session)
        logger.error(
            "settlement still pending for %s (tx %s)", request.resource, result.transaction
        )
        await gate._unknown_outcome_in_flight(session)
        await gate._emit(
            PaymentEvent(EventKind.ERROR, request, route, payment, code=code, status=503)
        )
        raise PaymentError(
            503,
            "settlement_pending",
            "the payment was sent but is not confirmed yet; do not pay again",
            headers={"Cache-Control": "no-store", "Retry-After": "5"},
        )
    await gate._release(session)
    await gate._emit(
        PaymentEvent(EventKind.SETTLE_FAILED, request, route, payment, code=code, status=402)
    )
    clean = result.model_copy(update={"error_message": None, "error_reason": code})
    accepts = await gate.requirements(route, request)
    raise gate._challenge(
        route,
        request,
        accepts,
        code,
        "the payment could not be settled",
        extra_headers={header_name: encode(clean)},
    )


async def recover(
    gate: PaymentGate,
    request: RequestInfo,
    route: Route,
    payment: Payment,
    requirements: PaymentRequirements,
    key: str,
    token: str,
) -> str | None:
    """The settlement transaction of an authorization held by a request that never answered,
    once this request (its retry) has taken the claim over; ``None`` to refuse it as today.

    The claim is held by another token. Either that request is still running, or its
    settlement reached the chain and its answer was lost (facilitator connection dropped,
    process killed). Only the chain can tell: if this authorization's transfer to us is
    there, the claim is handed to this request (compare and set: one retry wins). A request
    that stopped waiting for its settlement said so (its token starts with
    :data:`GAVE_UP`); any other holder is left the reconciler's ``owner_grace_seconds``
    after the transfer's block (in the chain's clock) to answer itself, and should it
    answer later still, it finds its token gone and sends nothing (:meth:`_mark_served`).
    A claim marked *sending* (settled, its answer on the way) is offered by the store only
    once its request stopped renewing it for ``owner_grace_seconds``: its process is gone.
    """
    reconciler = gate.reconciler
    if reconciler is None or not reconciler.covers(payment.network):
        return None
    try:
        holder = await gate._store_call(
            gate.store.recovery_check,
            key,
            request.resource,
            gate.clock.now(),
            reconciler.min_interval_seconds,
            # A claim whose answer was on the way: its request renews it while alive.
            reconciler.owner_grace_seconds,
        )
    except StoreError as exc:
        logger.error("replay store recovery check failed: %s", exc)
        raise failure(exc) from None
    if holder is None:  # not held for this resource, or looked up on chain moments ago
        return None
    try:
        found = await reconciler.find_transfer(
            network=payment.network,
            asset=requirements.asset,
            payer=payment.payer,
            nonce=payment.nonce,
            pay_to=requirements.pay_to,
            value=payment.amount,
        )
    except ValueError:
        return None  # not an EVM authorization the reconciler can look up
    except ChainReadError as exc:
        logger.error("reading the chain to reconcile a claimed payment failed: %s", exc)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, payment, code="reconcile"))
        raise PaymentError(
            503,
            "chain_unavailable",
            "the outcome of this payment cannot be checked now; retry it later",
            headers={
                "Cache-Control": "no-store",
                "Retry-After": str(max(1, int(reconciler.min_interval_seconds + 0.999))),
            },
        ) from None
    if found is None:
        return None
    if not holder.startswith(GAVE_UP) and found.age < reconciler.owner_grace_seconds:
        # Its request may still be alive and about to answer: leave it its answer.
        return None
    try:
        won = await gate._store_call(gate.store.take_over, key, holder, token)
    except StoreError as exc:
        logger.error("replay store take-over failed: %s", exc)
        raise failure(exc) from None
    if not won:  # another retry (or the original request) got there first
        return None
    logger.warning(
        "serving a retry of a payment settled on chain whose answer was lost (tx %s)",
        found.transaction,
    )
    return found.transaction


async def complete_recovery(gate: PaymentGate, session: PaymentSession) -> None:
    """A recovered payment is answered now: mark it used and give its receipt."""
    from x402.schemas import SettleResponse

    await gate._mark_served(session)
    receipt = SettleResponse(
        success=True,
        transaction=session.payment.transaction or "",
        network=session.payment.network,
        payer=session.payment.payer,
    )
    if session.version == 1:
        header_name, encoded = (
            protocol.X_PAYMENT_RESPONSE,
            protocol.encode_settle_response_v1(receipt),
        )
    else:
        header_name, encoded = (
            protocol.PAYMENT_RESPONSE,
            protocol.encode_settle_response(receipt),
        )
    session.response_headers = {header_name: encoded}
    await gate._emit(
        PaymentEvent(EventKind.SETTLED, session.request, session.route, session.payment)
    )


async def mark_served(gate: PaymentGate, session: PaymentSession) -> None:
    """Settled: mark the claim used before any content goes out.

    With reconciliation on it is marked *sending* (its sign of life renewed by
    :attr:`holds` while the answer runs) until :meth:`delivered`: a request lost before its
    answer went out whole leaves a claim that a retry can recover (see :meth:`_recover`).

    With reconciliation on, a claim that is no longer this request's (a retry took it over
    after reading the transfer on chain) is answered by that retry: this request must send
    nothing, or the payment would be answered twice.
    """
    # The journal row is written by the same store transaction that marks the claim used.
    row = session_row(gate, session, "settled", session.key)
    extra = journaled(row)
    try:
        if gate.reconciler is None:
            kept = await gate._store_call(
                lambda: gate.store.mark_used(session.key, session.token, **extra)
            )
        else:
            # "Sending" until the whole answer was handed to the server (delivered()): if
            # this request is lost before that, a retry of the payment is served instead.
            # Retried while the store fails, within half the grace a retry of the payment
            # leaves this request before taking its claim over.
            now = gate.clock.now()
            kept = await settled_write(
                gate,
                lambda: gate.store.mark_used(session.key, session.token, now, **extra),
                budget=min(gate.store_retry_seconds, gate.reconciler.owner_grace_seconds / 2),
            )
            if kept:
                session.answering = True
                gate.holds.add_answer(
                    session.key, session.token, gate.reconciler.owner_grace_seconds
                )
        if kept and row is not None:
            payer_prices.forget(gate, session.payment.payer)
    except StoreError as exc:
        logger.error("replay store mark_used failed after settlement: %s", exc)
        if gate.reconciler is None:
            return  # paid on chain; the chain itself now refuses the nonce
        # Unrecorded, a retry of this payment is served from the chain: answer nothing here.
        await gate._drop_idempotency(session)
        raise failure(exc) from None
    if not kept and gate.reconciler is not None:
        await gate._drop_idempotency(session)
        await gate._emit(
            PaymentEvent(
                EventKind.ERROR, session.request, session.route, session.payment, code="taken_over"
            )
        )
        raise PaymentError(
            409,
            "payment_already_processed",
            "this payment was settled and is answered to a retry of it",
            headers={"Cache-Control": "no-store"},
        )


async def delivered(gate: PaymentGate, session: PaymentSession, complete: bool = True) -> None:
    """The paid answer was handed to the server: whole (``complete``), or not (the app
    failed, the connection dropped, the answer was cut short).

    Integrations call it once per paid request after the last body chunk went out (it is a
    no-op for requests with nothing to record). A complete answer marks the claim used for
    good, so that a retry of the payment is a replay; an incomplete one hands the claim
    over, so that a retry is served (the buyer paid and did not get the answer).
    """
    task = gate.start_delivered(session, complete)
    if task is not None:
        await asyncio.shield(task)


def start_delivered(
    gate: PaymentGate, session: PaymentSession, complete: bool = True
) -> asyncio.Future[None] | None:
    """:meth:`delivered` started as a task of its own (``None`` when there is nothing to
    record), for code about to be cancelled: the record runs to its end all the same."""
    if not session.answering:
        return None
    session.answering = False
    gate.holds.discard_answer(session.key, session.token)
    # Servers report a request whose last body message went out as over, and frameworks
    # then cancel what still runs (Starlette's streaming responses do): a task of its own.
    task = asyncio.ensure_future(gate._record_delivery(session, complete))
    gate._deliveries.add(task)
    task.add_done_callback(gate._deliveries.discard)
    return task


async def record_delivery(gate: PaymentGate, session: PaymentSession, complete: bool) -> None:
    if not complete:
        # Nothing whole was answered: a retry with the same payment identifier is served
        # (not told "processed, answer not kept").
        await gate._drop_idempotency(session)
        await gate._give_up(session)
        return
    try:
        await gate._store_call(gate.store.mark_used, session.key, session.token)
    except StoreError as exc:
        # The claim stays "sending": a retry is served once more after the grace time.
        logger.error("replay store could not record a delivered answer: %s", exc)


async def abandon_recovered(gate: PaymentGate, session: PaymentSession) -> None:
    """A recovered retry failed: nothing more is charged, and the claim stays held (by this
    request's token) for the next retry to recover. A metered payment is credit meanwhile
    (once: the top-up is keyed by the claim, and the next retry's top-up is a no-op)."""
    await gate._drop_idempotency(session)
    await gate._release_credit(session)
    if session.route.price.metered and not session.payment.from_credit:
        await gate._credit_payment(session)
    await gate._give_up(session)


async def give_up(gate: PaymentGate, session: PaymentSession) -> None:
    """This request answers nothing for its claim: say so, so that a retry of the payment
    can be served as soon as its transfer shows on chain (see :meth:`_recover`)."""
    if gate.reconciler is None or session.token.startswith(GAVE_UP):
        return
    if session.answering:  # no answer of this request's is on the way any more
        session.answering = False
        gate.holds.discard_answer(session.key, session.token)
    try:
        await gate._store_call(
            gate.store.take_over, session.key, session.token, GAVE_UP + session.token
        )
    except StoreError as exc:
        # The retry then waits for the owner's grace time instead.
        logger.error("replay store hand-over failed: %s", exc)
