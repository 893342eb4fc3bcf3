"""Requests paid by ``batch-settlement`` vouchers: the gate's channel steps (opt-in).

A gate built with ``channels=ChannelSettings(...)`` offers ``batch-settlement`` beside ``exact``
(first on metered routes, after it on flat ones). A request carrying a voucher is checked
offline by the scheme, its deposit (if any) verified and settled by the facilitator, then takes
its channel's step in the store (:meth:`~x402gate.stores.base.Store.channel_begin`: one request
per cumulative step); after the handler, :func:`channel_finish` commits the charge (never above
the voucher) only when the handler succeeded, and :func:`channel_abort` releases the step
otherwise.

The voucher's ceiling is the request's quote; the charge is the price of the request: the whole
ceiling on flat and dynamic routes, what was used on metered ones. A metered answer the adapter
hands over whole (a JSON body) is measured before its headers go out, and its payment response
carries the exact charge. A streamed one (server-sent events, or a body too large to hold) gets
its headers before the usage is known: its payment response reports the whole ceiling as the
step (``chargedAmount`` and ``channelState``), which keeps the client's count in step with the
server's so that its next voucher matches, while the seller *earns* only what the stream used
(:func:`channel_complete`, after its last byte, or what it used so far when the client left).
The difference stays the payer's: claims collect what was earned, never the steps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import FacilitatorError, PaymentError, StoreError
from ..schemes.batch_settlement import (
    ChannelAuthorization,
    ChannelView,
    check_channel,
    codes,
    corrective_requirements,
    payment_response_extra,
)
from ..stores.channels import ChannelBegin, ChannelBeginOutcome, ChannelState
from . import payer_prices
from .channel_settings import (
    FACILITATOR,
    ChannelSettings,
    advertised_authorizer,
    authorizer_key_address,
)
from .charges import usage_charge
from .events import EventKind, PaymentEvent
from .failures import failure, safe_code
from .journal import journaled, session_row
from .model import Payment, PaymentSession, Route
from .throttle import limit_payer

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements

    from ..request import RequestInfo
    from .engine import PaymentGate

__all__ = [
    "BUSY_WAITS",
    "FACILITATOR",
    "ChannelSettings",
    "ChannelStepHold",
    "advertised_authorizer",
    "authorizer_key_address",
    "channel_abort",
    "channel_begin",
    "channel_complete",
    "channel_finish",
]

logger = logging.getLogger("x402gate")

Reject = Callable[[str, str, int], Awaitable[PaymentError]]

BUSY_WAITS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.4)
"""Seconds a request meeting its channel's step held by another request waits, between tries,
before answering ``channel_busy`` (about a second in all). A client that pays its next request
as soon as the previous answer arrived meets that answer's commit still running; it waits for it
(and then gets the corrective 402 if it signed on an older count) instead of a 409."""

_NOT_NEXT = "the voucher is not the channel's next step"


@dataclass(slots=True)
class ChannelStepHold:
    """A request holding its channel's step: what :func:`channel_finish` commits."""

    authorization: ChannelAuthorization
    view: ChannelView
    """The channel before this request's charge."""
    token: str
    earned: int = 0
    """What the seller had earned on the channel before this request."""
    streaming: bool = False
    """A metered answer whose headers went out before its usage was known: its step is
    committed by :func:`channel_complete`."""
    deferred: int | None = None
    """A metered answer held whole: its charge, measured before the headers, committed by
    :func:`channel_complete` once the answer went out (off the client's wait, as a credit
    charge is)."""
    finished: bool = False
    """The step was committed or released."""


def channel_commit_key(channel_id: str) -> str:
    """The key a channel's commit after the send is awaited under (see ``hold_commit``)."""
    return f"channel|{channel_id}"


def _view(state: ChannelState) -> ChannelView:
    return ChannelView(
        channel_id=state.channel_id,
        balance=state.balance,
        total_claimed=state.total_claimed,
        charged_cumulative_amount=state.charged,
        withdraw_requested_at=state.withdraw_requested_at,
        refund_nonce=state.refund_nonce,
        signed_max_claimable=state.max_claimable or None,
        signature=state.signature if state.max_claimable else None,
    )


def _int(value: Any) -> int:
    number = int(str(value))
    if number < 0:
        raise ValueError("negative")
    return number


async def _sync(
    gate: PaymentGate, channel_id: str, config: str, figures: Any, now: float
) -> ChannelState:
    """Mirror the chain figures a facilitator answered (``channelState`` or verify extra)."""
    if not isinstance(figures, dict):
        raise FacilitatorError("the facilitator answered no channel state")
    try:
        balance = _int(figures.get("balance", 0))
        claimed = _int(figures.get("totalClaimed", 0))
        withdraw = _int(figures.get("withdrawRequestedAt", 0))
        refund_nonce = _int(figures.get("refundNonce", 0))
    except (TypeError, ValueError):
        raise FacilitatorError("the facilitator answered a malformed channel state") from None
    state: ChannelState = await gate._store_call(
        lambda: gate.store.channel_sync(
            channel_id,
            config,
            balance=balance,
            total_claimed=claimed,
            withdraw_requested_at=withdraw,
            refund_nonce=refund_nonce,
            now=now,
        ),
        refusals=True,
    )
    return state


async def channel_begin(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    accepts: list[PaymentRequirements],
    reject: Reject,
) -> PaymentSession:
    """Everything before the handler for a ``batch-settlement`` payment (see the module)."""
    scheme = gate.channel_scheme
    assert scheme is not None
    now = gate.clock.now()
    try:
        auth = scheme.check(
            payload.payload, requirements, now=now, allow_unrecovered=gate.allow_smart_wallets
        )
    except PaymentError as exc:
        raise await reject(exc.code, exc.message, exc.status_code) from None
    if auth.kind == "refund":
        from .refunds import cooperative_refund  # the route is not run

        raise await cooperative_refund(
            gate, route, request, payload, requirements, accepts, auth, reject
        )
    if auth.recovered:
        # The voucher's signature proves the payer: count it before any channel step.
        await limit_payer(gate, route, request, auth.payer)
    channel_id = auth.channel_id
    # Canonical (checksummed, sorted): two clients spelling one config differently agree.
    config = auth.config.canonical()
    timeout = route.max_timeout_seconds or gate.max_timeout_seconds
    token = secrets.token_hex(16)
    try:
        # A signed voucher on a channel the store knows with fresh chain figures (nearly every
        # request) takes its step at once: one store call, and the store's rule answers what
        # a read first would have (unknown, not the next step, above the balance).
        begun = await _fast_step(gate, auth, token, timeout)
        if begun is None:
            await _checked_step(
                gate, route, request, payload, requirements, accepts, reject, auth, config
            )
            begun = await _take_step(gate, auth, token, timeout)
    except (StoreError, FacilitatorError) as exc:
        logger.error("channel step failed: %s", exc)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, code="channel"))
        raise failure(exc) from None
    except ValueError as exc:
        # The store refused what the client sent (a config it knows otherwise, a bad size).
        logger.info("channel voucher refused by the store: %s", exc)
        raise await reject(codes.VOUCHER_PAYLOAD, "the voucher was refused", 402) from None
    outcome, state = begun.outcome, begun.state
    if outcome is ChannelBeginOutcome.BUSY:
        raise await reject(codes.CHANNEL_BUSY, "another request holds this channel: retry", 409)
    if outcome is ChannelBeginOutcome.UNKNOWN or state is None:
        raise await reject(codes.CHANNEL_NOT_FOUND, "this channel is not known", 402)
    view = _view(state)
    if outcome is ChannelBeginOutcome.STARTED:
        # Renewed while the request runs (a long stream keeps its step).
        gate.holds.add_step(channel_id, token, gate.clock.now() + timeout, float(timeout))
    if outcome is ChannelBeginOutcome.MISMATCH:
        raise await _corrective(gate, route, request, accepts, requirements, view)
    if outcome is ChannelBeginOutcome.INSUFFICIENT:
        raise await reject(
            codes.CUMULATIVE_EXCEEDS_BALANCE, "the voucher is above the balance", 402
        )
    try:
        check_channel(auth, view)
    except PaymentError as exc:
        await _release_step(gate, channel_id, token)
        if exc.code == codes.CUMULATIVE_AMOUNT_MISMATCH:
            raise await _corrective(gate, route, request, accepts, requirements, view) from None
        raise await reject(exc.code, exc.message, exc.status_code) from None
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
    session = PaymentSession(
        route=route,
        request=request,
        payment=payment,
        payload=payload,
        requirements=requirements,
        version=2,
        key=f"channel:{channel_id}",
        token=token,
        started=gate.clock.now(),
    )
    session.channel = ChannelStepHold(auth, view, token, earned=state.earned)
    session.quote = auth.value
    session.deadline = gate._deadline(route, session.started)
    await gate._emit(PaymentEvent(EventKind.VERIFIED, request, route, payment))
    return session


async def _fast_step(
    gate: PaymentGate, auth: ChannelAuthorization, token: str, timeout: int
) -> ChannelBegin | None:
    """The step of a plain signed voucher, when the store's figures of its channel are fresh.

    None when the facilitator must be asked first (a deposit, a signature that needs it, a
    channel unknown here or figures older than ``sync_seconds``), or when the voucher cannot
    be a next step at all: :func:`_checked_step` then does everything in order. A step this
    took on stale figures is released before that."""
    base = auth.max_claimable_amount - auth.value
    if auth.deposit is not None or not auth.recovered or base < 0 or auth.max_claimable_amount == 0:
        return None
    begun = await _take_step(gate, auth, token, timeout)
    state = begun.state
    if state is None or begun.outcome is ChannelBeginOutcome.UNKNOWN:
        return None
    if gate.clock.now() - state.synced_at > gate.channels_sync_seconds:
        if begun.outcome is ChannelBeginOutcome.STARTED:
            # The same token begins again after the facilitator's answer (were this release
            # lost, that begin finds its own step).
            await _release_step(gate, auth.channel_id, token)
        return None
    return begun


async def _checked_step(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    accepts: list[PaymentRequirements],
    reject: Reject,
    auth: ChannelAuthorization,
    config: str,
) -> None:
    """Before the step of a voucher :func:`_fast_step` did not take: the channel read, the
    corrective 402 of a voucher that is not the next step, the facilitator's verdict (and the
    deposit's settlement) when needed, and the chain figures mirrored."""
    scheme = gate.channel_scheme
    assert scheme is not None
    channel_id = auth.channel_id
    state = await gate._store_call(gate.store.channel_get, channel_id)
    # Not the channel's next step (a replayed deposit, a stale or a zero voucher): the
    # corrective 402 now, before the facilitator is asked about it.
    base = auth.max_claimable_amount - auth.value
    if base < 0 or auth.max_claimable_amount == 0 or (state is not None and base != state.charged):
        if state is None:
            raise await reject(codes.CUMULATIVE_AMOUNT_MISMATCH, _NOT_NEXT, 402)
        raise await _corrective(gate, route, request, accepts, requirements, _view(state))
    if auth.deposit is not None or not auth.recovered:
        with gate.telemetry.step("verify", route, "batch-settlement"):
            verdict = await scheme.verify(payload, requirements)
        if not verdict.is_valid:
            code = safe_code(verdict.invalid_reason, "payment_invalid")
            raise await reject(code, "the facilitator refused this payment", 402)
        if not auth.recovered:
            # Proven by the facilitator only: counted now, before a deposit is collected.
            await limit_payer(gate, route, request, auth.payer)
    if auth.deposit is not None:
        with gate.telemetry.step("settle", route, "batch-settlement"):
            settled = await scheme.settle(payload, requirements)
        if not settled.success:
            code = safe_code(settled.error_reason, "payment_invalid")
            raise await reject(code, "the deposit could not be collected", 402)
        figures = (settled.extra or {}).get("channelState")
        await _sync(gate, channel_id, config, figures, gate.clock.now())
    elif state is None or gate.clock.now() - state.synced_at > gate.channels_sync_seconds:
        with gate.telemetry.step("verify", route, "batch-settlement"):
            verdict = await scheme.verify(payload, requirements)
        if not verdict.is_valid:
            code = safe_code(verdict.invalid_reason, "payment_invalid")
            raise await reject(code, "the facilitator refused this payment", 402)
        await _sync(gate, channel_id, config, verdict.extra, gate.clock.now())


async def _take_step(
    gate: PaymentGate, auth: ChannelAuthorization, token: str, timeout: int
) -> ChannelBegin:
    """Begin the voucher's step; while another request holds it, wait a little for it (for
    an answer of this process whose commit runs after its send, until that commit is done)."""
    if gate._pending_commits:
        await gate._await_commits(channel_commit_key(auth.channel_id))
    waits = iter(BUSY_WAITS)
    while True:
        now = gate.clock.now()
        begun: ChannelBegin = await gate._store_call(
            functools.partial(
                gate.store.channel_begin,
                auth.channel_id,
                token,
                base=max(auth.max_claimable_amount - auth.value, 0),
                max_claimable=auth.max_claimable_amount,
                signature="0x" + auth.signature.hex(),
                expires_at=now + timeout,
                now=now,
            ),
            refusals=True,
        )
        if begun.outcome is not ChannelBeginOutcome.BUSY:
            return begun
        delay = next(waits, None)
        if delay is None:
            return begun
        await asyncio.sleep(delay)


async def _corrective(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    accepts: list[PaymentRequirements],
    requirements: PaymentRequirements,
    view: ChannelView,
) -> PaymentError:
    """The corrective 402: the channel's terms with its state, so the client resumes."""
    code = codes.CUMULATIVE_AMOUNT_MISMATCH
    await gate._emit(PaymentEvent(EventKind.REJECTED, request, route, code=code, status=402))
    fixed = [corrective_requirements(r, view) if r is requirements else r for r in accepts]
    return gate._challenge(route, request, fixed, code, _NOT_NEXT)


async def _release_step(gate: PaymentGate, channel_id: str, token: str) -> None:
    gate.holds.discard_step(channel_id, token)
    try:
        await gate._store_call(gate.store.channel_release, channel_id, token)
    except StoreError as exc:
        # The step expires on its own and is then forfeited: nothing was charged.
        logger.error("channel release failed: %s", exc)


async def channel_finish(
    gate: PaymentGate,
    session: PaymentSession,
    status_code: int,
    *,
    whole: bool = False,
    usage: Any = None,
) -> dict[str, str]:
    """After the handler answered: the headers to add (the payment response).

    A status of 400 or more releases the step (nothing charged). A flat or dynamic price
    commits the voucher's value now. A metered answer handed over ``whole`` is charged what it
    used (``usage``, or the time it took) now; a streamed one reports its whole step and is
    charged later by :func:`channel_complete`."""
    hold = session.channel
    assert hold is not None
    session.done = True
    channel_id = hold.authorization.channel_id
    if status_code >= 400:
        hold.finished = True
        await _release_step(gate, channel_id, hold.token)
        return {}
    value = hold.authorization.value
    if not session.route.price.metered:
        # A payer-priced route charges the payer's price inside the voucher's ceiling.
        charge = await payer_prices.channel_charge(gate, session, value)
    elif whole:
        # Measured now; committed once the answer went out (channel_complete), as a streamed
        # answer's step is. The receipt names the step the commit takes.
        session.ended = gate.clock.now()
        hold.deferred = usage_charge(gate, session, usage, value)
        session.response_headers = _receipt(session, hold.view, hold.deferred)
        return session.response_headers
    else:
        # Streamed: the step at its ceiling now, the charge measured when the answer ends.
        hold.streaming = True
        session.response_headers = _receipt(session, hold.view, value)
        return session.response_headers
    state = await _commit(gate, session, charge, charge)
    if state is None:
        # The step was taken over (this request outlived it): its charge is forfeited, and
        # its content is not served unpaid.
        raise PaymentError(409, codes.CHANNEL_BUSY, "this request's channel step expired: retry")
    session.response_headers = _receipt(
        session, hold.view, state.charged - hold.view.charged_cumulative_amount
    )
    return session.response_headers


async def channel_complete(gate: PaymentGate, session: PaymentSession, usage: Any = None) -> int:
    """A metered answer ended (or its client left): commit its step, earning what it used
    (never above the voucher). A streamed answer's step is the voucher's whole value; a whole
    answer's is the charge it was measured at. Returns the charge; 0 when nothing could be
    committed (the step then expires and is forfeited: never a double charge)."""
    hold = session.channel
    if hold is None or hold.finished or not (hold.streaming or hold.deferred is not None):
        return session.charged or 0
    if hold.deferred is not None:
        charge = step = hold.deferred
    else:
        if session.ended is None:
            session.ended = gate.clock.now()
        step = hold.authorization.value
        charge = usage_charge(gate, session, usage, step)
    try:
        state = await _commit(gate, session, charge, step)
    except PaymentError:
        return 0
    if state is None:
        logger.warning("a metered answer's channel step expired before its commit: forfeited")
        return 0
    return session.charged or 0


async def _commit(
    gate: PaymentGate, session: PaymentSession, charge: int, step: int
) -> ChannelState | None:
    """Commit the step (``step`` moves the voucher count, ``charge`` what the seller earns)."""
    hold = session.channel
    assert hold is not None
    hold.finished = True
    channel_id = hold.authorization.channel_id
    gate.holds.discard_step(channel_id, hold.token)
    row = session_row(gate, session, "channel_charge", f"{channel_id}|{hold.token}")
    extra = journaled(row)
    try:
        state: ChannelState | None = await gate._store_call(
            lambda: gate.store.channel_commit(
                channel_id, hold.token, charge, gate.clock.now(), step=step, **extra
            )
        )
    except StoreError as exc:
        logger.error("channel commit failed: %s", exc)
        await _release_step(gate, channel_id, hold.token)
        raise failure(exc) from None
    if state is None:
        return None
    payer_prices.forget(gate, session.payment.payer)
    session.charged = state.earned - hold.earned
    await gate._emit(
        PaymentEvent(EventKind.SETTLED, session.request, session.route, session.payment)
    )
    if session.route.price.metered:
        await gate._emit(
            PaymentEvent(
                EventKind.CHARGED,
                session.request,
                session.route,
                session.payment,
                amount=session.charged,
            )
        )
    return state


def _receipt(session: PaymentSession, view: ChannelView, step: int) -> dict[str, str]:
    """The payment-response header: the step taken and the channel after it.

    Written as the JSON the SDK's ``SettleResponse`` dumps (the same keys, in its order),
    without building the model on every voucher."""
    receipt = {
        "success": True,
        "payer": session.payment.payer,
        "transaction": "",
        "network": session.requirements.network,
        "extra": payment_response_extra(view, step),
    }
    return {protocol.PAYMENT_RESPONSE: protocol.b64json(receipt)}


async def channel_abort(gate: PaymentGate, session: PaymentSession) -> None:
    """The handler raised: charge nothing."""
    hold = session.channel
    if hold is None or session.done:
        return
    session.done = True
    hold.finished = True
    await _release_step(gate, hold.authorization.channel_id, hold.token)
