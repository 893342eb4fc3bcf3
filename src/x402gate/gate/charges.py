"""Metered routes after the answer: the charge of what was used, and the waits that keep a
payer's balance fresh while it is committed.

:func:`hold_commit` (right before the last body message) fixes the end of the measured time and
makes the payer's next credit request in this process wait for the commit; :func:`complete`
(right after) charges what was used, capped at the quote, and returns the rest;
:func:`release_credit` returns the whole reservation when the answer failed. Per-second routes
end their answer at :func:`answer_overdue`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..money import scale_to_asset
from ..stores.base import credit_account
from . import payer_prices
from .events import EventKind, PaymentEvent
from .journal import journaled, session_row
from .model import PaymentSession, Route
from .settled_writes import settled_write

if TYPE_CHECKING:
    from .engine import PaymentGate

__all__ = [
    "COMMIT_WAIT_SECONDS",
    "answer_overdue",
    "await_commits",
    "complete",
    "complete_after_send",
    "deadline",
    "drop_hold",
    "hold_commit",
    "release_credit",
    "usage_charge",
]

logger = logging.getLogger("x402gate")

COMMIT_WAIT_SECONDS = 5.0
"""How long a payer's next credit request waits for the commit of its previous answer."""


def hold_commit(gate: PaymentGate, session: PaymentSession) -> None:
    """The answer of a metered request is about to end: call it right before sending the last
    body message, then :meth:`complete` right after.

    It fixes the end of the measured time (per-second routes are not charged for the send)
    and, until :meth:`complete` returns, makes the next credit request of the same payer in
    this process wait for the commit, so that it sees the new balance although the charge is
    committed after the client got its answer. Waiting only keeps balances fresh: until the
    commit, the reservation keeps the whole quote out of the payer's available credit, so
    nothing can be overdrawn meanwhile.
    """
    if session.channel is not None:
        if session.ended is None:
            session.ended = gate.clock.now()
        if session.commit_hold is not None:
            return
        # The next voucher of the channel in this process waits for the commit rather than
        # meeting the step still held (see channels._take_step).
        from .channels import channel_commit_key

        account = channel_commit_key(session.channel.authorization.channel_id)
    elif session.reservation is None or session.commit_hold is not None:
        return
    else:
        session.ended = gate.clock.now()
        payment = session.payment
        account = credit_account(payment.network, payment.asset.address, payment.payer)
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    with gate._pending_lock:
        gate._pending_commits.setdefault(account, set()).add(future)
    session.commit_hold = (account, future)


def drop_hold(gate: PaymentGate, session: PaymentSession) -> None:
    hold, session.commit_hold = session.commit_hold, None
    if hold is None:
        return
    account, future = hold
    with gate._pending_lock:
        pending = gate._pending_commits.get(account)
        if pending is not None:
            pending.discard(future)
            if not pending:
                del gate._pending_commits[account]
    if not future.done():
        future.set_result(None)


async def await_commits(gate: PaymentGate, account: str) -> None:
    with gate._pending_lock:
        pending = list(gate._pending_commits.get(account, ()))
    if not pending:
        return
    # Futures of any loop or thread (sync integrations run on the background loop);
    # asyncio.wait never cancels them, even when this request is cancelled.
    _, late = await asyncio.wait(
        [asyncio.wrap_future(future) for future in pending], timeout=COMMIT_WAIT_SECONDS
    )
    if late:
        # Freshness only: the late commit's reservation still holds its whole quote.
        logger.warning("a credit commit is late; serving from the balance as it stands")


async def complete_after_send(gate: PaymentGate, session: PaymentSession, usage: Any = None) -> int:
    """:meth:`complete`, run to its end even when the request's task is cancelled.

    Once the last body message is out, servers report the request as over (uvicorn's
    ``receive`` answers ``http.disconnect``) and frameworks cancel what is still running
    (Starlette's streaming responses do): the commit must not be cut short by that, and the
    payer's next request must keep waiting for it (:meth:`hold_commit`).
    """
    task = asyncio.ensure_future(gate.complete(session, usage))
    gate._commits.add(task)
    task.add_done_callback(gate._commits.discard)
    return await asyncio.shield(task)


async def complete(gate: PaymentGate, session: PaymentSession, usage: Any = None) -> int:
    """A metered request is over: charge what it used (capped at its quote), return the rest
    to the payer's credit. ``usage`` is what the response reported (tokens), or ``None``;
    per-second routes measure the time themselves. Returns the charge, in atomic units.

    Called after the last body message went out (see :meth:`hold_commit`), the commit is off
    the client's critical path. Until then the reservation is renewed (:attr:`holds`), however
    long the answer ran; a commit that still comes after its expiry charges what the payer
    has available (see ``Store.credit_commit``). A commit the store refuses is retried
    (``store_retry_seconds``), then left to the background thread, which commits it once the
    store is back; this returns 0 then. Never a double charge, never credit out of
    nothing."""
    if session.channel is not None:
        try:
            return await gate._channel_complete(session, usage)
        finally:
            gate._drop_hold(session)
    reservation, session.reservation = session.reservation, None
    if reservation is None:
        gate._drop_hold(session)
        return session.charged or 0
    gate.holds.discard(reservation)
    try:
        charge = usage_charge(gate, session, usage, session.quote)
        try:
            row = session_row(gate, session, "charged", reservation)
            extra = journaled(row)
            now = gate.clock.now()
            store = gate.store
            charged = await settled_write(
                gate, lambda: store.credit_commit(reservation, charge, now, **extra)
            )
        except StoreError as exc:
            # The answer went out: its charge is owed. The background thread commits it once
            # the store is back (a commit is idempotent per reservation; one that comes after
            # the hold expired charges only what the payer has available then).
            logger.error(
                "credit commit failed for %s (left to the background): %s",
                session.request.resource,
                exc,
            )
            gate.holds.owe(
                f"credit charge {reservation}",
                lambda now: store.credit_commit(reservation, charge, now, **extra),
            )
            return 0
    finally:
        gate._drop_hold(session)
    session.charged = charged
    payer_prices.forget(gate, session.payment.payer)
    await gate._emit(
        PaymentEvent(
            EventKind.CHARGED, session.request, session.route, session.payment, amount=charged
        )
    )
    return charged


def usage_charge(gate: PaymentGate, session: PaymentSession, usage: Any, cap: int) -> int:
    """What a metered answer costs, in the asset's atomic units, at most ``cap``: the price of
    ``usage`` (what the answer reported; ``None`` costs the quote, as documented), or on
    per-second routes of the time from the handler's start to the answer's end."""
    from ..metering import PerSecond, Usage

    if isinstance(session.route.price, PerSecond):
        ended = session.ended if session.ended is not None else gate.clock.now()
        usage = Usage(seconds=max(0.0, ended - session.started))
    micros = session.route.price.charge(usage, session.request)
    return min(scale_to_asset(micros, session.payment.asset.decimals), cap)


async def release_credit(gate: PaymentGate, session: PaymentSession) -> None:
    reservation, session.reservation = session.reservation, None
    if reservation is None:
        gate._drop_hold(session)
        return
    gate.holds.discard(reservation)
    try:
        await gate._store_call(gate.store.credit_release, reservation, gate.clock.now())
    except StoreError as exc:
        logger.error("credit release failed (the hold expires by itself): %s", exc)
    finally:
        gate._drop_hold(session)
    await gate._emit(
        PaymentEvent(EventKind.REFUNDED, session.request, session.route, session.payment)
    )


def deadline(route: Route, started: float) -> float | None:
    from ..metering import PerSecond

    price = route.price
    if isinstance(price, PerSecond):
        return started + float(price.max_seconds)
    return None


def answer_overdue(gate: PaymentGate, session: PaymentSession) -> bool:
    """True once a per-second answer has run its paid maximum (``max_seconds``).

    Integrations check it before each body chunk and end the answer there: what comes
    after was not paid for. :attr:`PaymentSession.deadline` is ``None`` on other routes.
    """
    return session.deadline is not None and gate.clock.now() >= session.deadline
