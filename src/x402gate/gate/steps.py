"""The per-request steps every integration drives: :func:`begin` before the handler,
:func:`finish` after it answered, :func:`abort` when it raised.

``begin`` prices the request, answers 402 when there is no payment, decodes and matches the
payment (400 when malformed, 402 when for other terms), checks it with the gate's scheme
(fields, window, signature: no I/O), claims the authorization atomically in the replay store
(exactly one request can hold it, bound to this resource), holds its amount on the payer's
balance, asks the scheme to verify it, and — with policy ``before`` — settles it. ``finish``
settles with policy ``after`` only when the handler succeeded.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import ConfigurationError, FacilitatorError, PaymentError, StoreError
from ..pricing import PayerPrice
from ..request import RequestInfo
from ..schemes.batch_settlement.codes import SCHEME as BATCH_SETTLEMENT
from ..stores import ClaimResult, replay_key
from .challenge import UNPAID
from .channels import channel_abort, channel_begin, channel_finish
from .events import EventKind, PaymentEvent
from .failures import failure, safe_code
from .model import Payment, PaymentSession, Route
from .throttle import limit_ip, limit_payer

if TYPE_CHECKING:
    from .engine import PaymentGate

__all__ = ["abort", "begin", "finish", "release"]

logger = logging.getLogger("x402gate")


async def begin(gate: PaymentGate, route: Route, request: RequestInfo) -> PaymentSession:
    """Everything before the handler. Returns the session, or raises the answer to send."""
    if not gate._started:
        try:
            await gate.startup()
        except ConfigurationError:
            logger.exception("x402gate start-up check failed")
            raise PaymentError(
                503, "payment_unavailable", "payments are not available on this server"
            ) from None
        except (StoreError, FacilitatorError) as exc:
            logger.error("x402gate start-up check failed: %s", exc)
            await gate._emit(PaymentEvent(EventKind.ERROR, request, route, code="startup"))
            raise failure(exc) from None
    elif gate.claimer is not None and gate.claimer.forked:
        gate.claimer.start()  # a worker forked after start-up: threads do not survive a fork

    # Per client address, before any work is done for the request (429, nothing priced).
    await limit_ip(gate, route, request)
    # Everything after this names the configured public origin, never the client's Host.
    request.url = gate.public_url(request)
    cached = gate._plain_challenge(route, request)
    if cached is not None:
        await gate._emit(PaymentEvent(EventKind.CHALLENGED, request, route, status=402))
        raise cached
    accepts = await gate.requirements(route, request)
    full_quotes: dict[tuple[str, str], int] = {}
    if route.price.metered:
        full_quotes = {(r.network, r.asset): int(r.amount) for r in accepts}
        credit, accepts = await gate._credit_path(route, request, accepts)
        if credit is not None:
            await gate._emit(PaymentEvent(EventKind.VERIFIED, request, route, credit.payment))
            return credit
        if route.credit_topup:
            accepts = [
                r if r.scheme == BATCH_SETTLEMENT else gate._with_topup(route, r) for r in accepts
            ]
    try:
        decoded = protocol.decode_payment(request.headers)
    except PaymentError as exc:
        await gate._emit(
            PaymentEvent(EventKind.REJECTED, request, route, code=exc.code, status=400)
        )
        raise gate._challenge(route, request, accepts, exc.code, exc.message, status=400) from None
    if decoded is None:
        await gate._emit(PaymentEvent(EventKind.CHALLENGED, request, route, status=402))
        answer = gate._challenge(route, request, accepts, "payment_required", UNPAID)
        gate._remember_challenge(route, request, answer)
        raise answer

    async def reject(code: str, message: str, status: int = 402) -> PaymentError:
        await gate._emit(PaymentEvent(EventKind.REJECTED, request, route, code=code, status=status))
        return gate._challenge(route, request, accepts, code, message, status=status)

    try:
        requirements = protocol.match_requirements(decoded, accepts)
    except PaymentError as exc:
        raise await reject(exc.code, exc.message) from None
    if requirements.scheme == BATCH_SETTLEMENT and gate.channel_scheme is not None:
        return await channel_begin(
            gate, route, request, decoded.payload, requirements, accepts, reject
        )
    try:
        auth = gate.scheme.check(
            decoded.payload.payload,
            requirements,
            now=gate.clock.now(),
            allow_unrecovered=gate.allow_smart_wallets,
        )
    except PaymentError as exc:
        raise await reject(exc.code, exc.message, exc.status_code) from None
    if auth.recovered:
        # The signature proves the payer: count it before anything is claimed or verified.
        await limit_payer(gate, route, request, auth.payer)

    try:
        payment_id = gate._payment_id(route, decoded.payload)
    except PaymentError as exc:
        raise await reject(exc.code, exc.message, exc.status_code) from None
    fingerprint = ""
    busy: PaymentError | None = None
    if payment_id is not None:
        fingerprint = gate._fingerprint(request, requirements, auth)
        busy = await gate._begin_idempotent(route, request, accepts, payment_id, fingerprint)

    payload = decoded.payload
    if decoded.version == 1:
        payload = payload.model_copy(update={"accepted": requirements})
    asset = next(
        a
        for a in (route.assets or gate.assets)
        if a.network == requirements.network and a.address == requirements.asset
    )
    payment = Payment(
        payer=auth.payer,
        amount=auth.value,
        asset=asset,
        pay_to=requirements.pay_to,
        nonce=auth.nonce,
        resource=request.resource,
        valid_before=auth.valid_before,
    )
    key = replay_key(requirements.network, requirements.asset, auth.payer, auth.nonce)
    token = secrets.token_hex(16)
    # A busy identifier is another request's: this one must not abandon its record.
    idempotency = (payment_id, fingerprint) if payment_id and busy is None else None
    transaction: str | None = None
    if busy is not None:
        # Another request holds the identifier. It may be gone (process killed) with its
        # payment settled: only a recovery from the chain may answer here. Claiming the nonce
        # would race that request's own claim and refuse it.
        transaction = await gate._recover(request, route, payment, requirements, key, token)
        if transaction is None:
            raise busy
        # The request that reserved the identifier is gone (its claim was recovered): its
        # pending record is this request's to complete (any request with the same identifier
        # and fingerprint is the same logical request).
        idempotency = (payment_id, fingerprint) if payment_id is not None else None
        claim = ClaimResult.CLAIMED
    else:
        try:
            with gate.telemetry.step("claim", route):
                claim = await gate._store_call(
                    gate.store.claim,
                    key,
                    request.resource,
                    token,
                    auth.valid_before,
                    gate.clock.now(),
                )
        except StoreError as exc:
            logger.error("replay store claim failed: %s", exc)
            await gate._abandon(idempotency)
            await gate._emit(PaymentEvent(EventKind.ERROR, request, route, payment, code="store"))
            raise failure(exc) from None
        if claim is ClaimResult.IN_FLIGHT or claim is ClaimResult.USED:
            # USED may be a claim whose answer never went out (sending): _recover tells.
            try:
                transaction = await gate._recover(request, route, payment, requirements, key, token)
            except PaymentError:
                await gate._abandon(idempotency)
                raise
            if transaction is not None:
                claim = ClaimResult.CLAIMED
    if claim is not ClaimResult.CLAIMED:
        await gate._abandon(idempotency)
        if claim is ClaimResult.BOUND_ELSEWHERE:
            raise await reject(
                "payment_bound_to_other_resource",
                "this payment was presented for another resource and cannot be used here",
            )
        raise await reject(
            "invalid_exact_evm_nonce_already_used",
            "this payment authorization was already used or is being used",
        )
    session = PaymentSession(
        route=route,
        request=request,
        payment=payment,
        payload=payload,
        requirements=requirements,
        version=decoded.version,
        key=key,
        token=token,
        idempotency=idempotency,
        started=gate.clock.now(),
    )
    session.deadline = gate._deadline(route, session.started)
    if route.price.metered:
        session.quote = full_quotes[(requirements.network, requirements.asset)]
    if transaction is not None:
        # Paid on chain already, by this very authorization: nothing to verify or settle.
        session.recovered = True
        payment.transaction = transaction
        await gate._emit(PaymentEvent(EventKind.RECOVERED, request, route, payment))
        if route.settlement == "before":
            await gate._complete_recovery(session)
        return session
    if gate.limit_in_flight:
        await gate._admit(session, accepts)

    use_facilitator = (
        route.verify_with_facilitator
        if route.verify_with_facilitator is not None
        else gate.verify_with_facilitator
    )
    # Without a balance read on chain, the facilitator's verify is what vouches that the
    # payer can pay this one payment: it runs even when verification is turned off.
    vouch = gate.limit_in_flight and not session.on_chain
    if use_facilitator or vouch or not auth.recovered:
        try:
            with gate.telemetry.step("verify", route, requirements.scheme) as step:
                verdict = await gate.scheme.verify(payload, requirements)
                if not verdict.is_valid:
                    step.refused(safe_code(verdict.invalid_reason, "payment_invalid"))
        except FacilitatorError as exc:
            await gate._release(session)
            await gate._emit(PaymentEvent(EventKind.ERROR, request, route, payment, code="verify"))
            raise failure(exc) from None
        if not verdict.is_valid:
            await gate._release(session)
            code = safe_code(verdict.invalid_reason, "payment_invalid")
            raise await reject(code, "the facilitator refused this payment")
    if not auth.recovered:
        # Only the facilitator's verify proved this payer: count it now, nothing settled yet.
        try:
            await limit_payer(gate, route, request, auth.payer)
        except PaymentError:
            await gate._release(session)
            raise
    await gate._emit(PaymentEvent(EventKind.VERIFIED, request, route, payment))

    if route.settlement == "before":
        await gate._settle(session)
    # Per-second routes measure from here: the payment checks are not the handler's time.
    session.started = gate.clock.now()
    return session


async def finish(
    gate: PaymentGate,
    session: PaymentSession,
    status_code: int,
    *,
    recording: bool = False,
    whole: bool = False,
    usage: Any = None,
) -> dict[str, str]:
    """After the handler answered with ``status_code``: the headers to add to its response.

    Policy ``after``: a status below 400 settles now, and the handler's content may be sent
    only if this returns; a failed settlement raises the 402 to send instead. A status of
    400 or more charges nothing and releases the claim.

    ``recording=True`` promises a later :meth:`record` of the whole answer (for retries with
    a payment identifier); otherwise retries are told the payment was already processed.
    Once the answer was handed to the server, integrations call :meth:`delivered`.

    ``whole=True``: the adapter holds the whole answer, whose ``usage`` was measured (metered
    routes paid by a channel voucher are then charged exactly before the headers go out).
    """
    if session.done:
        return session.response_headers
    if session.channel is not None:
        return await channel_finish(gate, session, status_code, whole=whole, usage=usage)
    if session.recovered and session.route.settlement == "after":
        session.done = True
        if status_code >= 400:
            # The claim stays with this retry's token, unanswered: a later retry of the same
            # payment is recovered again, so the buyer still gets one answer for it.
            await gate._abandon_recovered(session)
            return {}
        await gate._complete_recovery(session)
        return await _collected(gate, session, status_code, recording)
    if session.route.settlement == "before":
        session.done = True
        if not recording:
            await gate.record(session, status_code, (), None)
        return session.response_headers
    # Done before settling: whatever happens next, _settle alone decides whether the claim
    # is released (definitive refusal) or stays held (outcome unknown) — abort() must not.
    session.done = True
    if session.payment.from_credit:
        if status_code >= 400:
            await gate._release_credit(session)
            return {}
        session.response_headers = gate._credit_headers(session)
        return session.response_headers
    if status_code >= 400:
        await gate._release(session)
        return {}
    await gate._settle(session)
    return await _collected(gate, session, status_code, recording)


async def _collected(
    gate: PaymentGate, session: PaymentSession, status_code: int, recording: bool
) -> dict[str, str]:
    """The steps after the payment of an answer was collected: a metered route's credit is
    funded (and its headers added), and the answer recorded unless the adapter records it."""
    if session.route.price.metered:
        await gate._fund_reservation(session)
        session.response_headers.update(gate._credit_headers(session))
    elif (
        isinstance(session.route.price, PayerPrice)
        and session.channel is None
        and gate.public_origins
    ):
        # The session token names the payer: the next 402 can quote the payer's price.
        session.response_headers.update(gate._credit_headers(session))
    if not recording:
        await gate.record(session, status_code, (), None)
    return session.response_headers


async def abort(gate: PaymentGate, session: PaymentSession) -> None:
    """The handler raised: charge nothing and release the claim (if not settled yet)."""
    # A settled answer that never went out whole: a retry of the payment is served.
    if session.channel is not None:
        await channel_abort(gate, session)
        return
    await gate.delivered(session, complete=False)
    if session.done:
        await gate._release_credit(session)
        return
    session.done = True
    if session.payment.from_credit:
        await gate._release_credit(session)
    elif session.recovered:
        await gate._abandon_recovered(session)
    elif not session.payment.settled:
        await gate._release(session)


async def release(gate: PaymentGate, session: PaymentSession) -> None:
    idempotency, session.idempotency = session.idempotency, None
    await gate._abandon(idempotency)
    try:
        await gate._store_call(gate.store.release, session.key, session.token)
    except StoreError as exc:
        # The claim stays held until the authorization expires: nothing can double-spend it.
        logger.error("replay store release failed: %s", exc)
    await gate._release_in_flight(session)
    await gate._emit(
        PaymentEvent(EventKind.RELEASED, session.request, session.route, session.payment)
    )
