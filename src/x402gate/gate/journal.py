"""What the gate writes into the store's payments journal (:mod:`x402gate.stores.journal`).

Rows of money that moved are built here and handed to the store's commit itself
(``mark_used``, ``credit_commit``, ``channel_commit`` with ``journal=``), so the store writes
them in the same transaction. Refusals, failures and refunds are appended on their own when
their event is emitted: they move no money, and counting them in the journal (rather than in a
counter of their own) lets one report give rates over any window.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, StoreError
from ..stores.journal import MAX_TEXT, JournalRow
from .events import EventKind, PaymentEvent
from .model import PaymentSession, Route

if TYPE_CHECKING:
    from ..request import RequestInfo
    from .engine import PaymentGate

__all__ = [
    "EVENT_OUTCOMES",
    "RefusalBudget",
    "journaled",
    "record_event",
    "route_label",
    "session_row",
]

logger = logging.getLogger("x402gate")

EVENT_OUTCOMES: dict[EventKind, str] = {
    EventKind.REJECTED: "refused",
    EventKind.SETTLE_FAILED: "refused",
    EventKind.ERROR: "error",
    EventKind.REFUNDED: "refunded",
}


def route_label(request: RequestInfo, route: Route | None = None) -> str:
    """The route's name (its route-table key), else ``METHOD /path`` of the request, cut to
    what a row keeps."""
    if route is not None and route.name:
        return route.name[:MAX_TEXT]
    return f"{request.method} {request.path}"[:MAX_TEXT]


def _own_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2`` from 3.12, ``_sha256`` before), else hashlib's.

    The same digest, so the same row ids as ever (a retried commit finds its row). hashlib's
    OpenSSL constructor looks the algorithm up in OpenSSL's providers on every call: about
    1 µs in a loop, but 11 µs in a request (caches cold from the request's other work), where
    this one takes 4."""
    for module in ("_sha2", "_sha256"):
        try:
            digest: Callable[[bytes], Any] = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return digest
    return hashlib.sha256


_sha256 = _own_sha256()


def _row_id(kind: str, name: str) -> str:
    # Keys may be long (network|asset|payer|nonce): a digest keeps ids short and unique.
    return f"{kind}:{_sha256(name.encode()).hexdigest()[:40]}"


def session_row(
    gate: PaymentGate, session: PaymentSession, outcome: str, name: str
) -> JournalRow | None:
    """The row recording ``outcome`` of ``session`` (``name`` makes its id unique: the replay
    key, the reservation or the channel step), or None when the gate keeps no journal. The
    amount is the payment's; stores replace it with what a commit actually charged."""
    if not gate.journal:
        return None
    payment = session.payment
    now = gate.clock.now()
    latency = max(0.0, now - session.started) if session.started else None
    return JournalRow(
        id=_row_id(outcome, name),
        time=now,
        route=route_label(session.request, session.route),
        payer=payment.payer.lower()[:MAX_TEXT],
        amount=payment.amount,
        asset=payment.asset.address.lower()[:MAX_TEXT],
        network=payment.network[:MAX_TEXT],
        outcome=outcome,
        transaction=(payment.transaction or "")[:MAX_TEXT],
        latency=latency,
        scheme="batch-settlement" if session.channel is not None else "exact",
        detail=session.note[:MAX_TEXT],
    )


def journaled(row: JournalRow | None) -> dict[str, Any]:
    """The keyword arguments handing ``row`` to a store commit: none without a row, so that a
    store written before the journal is never given an argument it does not take."""
    return {} if row is None else {"journal": row}


REFUSAL_ROWS_PER_SECOND = 50
"""Rows of refusals and failures one gate writes per second at most: unpaid clients cannot make
the journal grow faster than that (a flood beyond it is dropped, and logged once a second)."""


class RefusalBudget:
    """A per-second allowance of refusal rows (one window, reset each second)."""

    __slots__ = ("dropped", "left", "second")

    def __init__(self) -> None:
        self.second = -1
        self.left = 0
        self.dropped = 0

    def take(self, now: float) -> bool:
        second = int(now)
        if second != self.second:
            if self.dropped:
                logger.warning(
                    "payments journal: %d refusal rows dropped (over %d a second)",
                    self.dropped,
                    REFUSAL_ROWS_PER_SECOND,
                )
            self.second, self.left, self.dropped = second, REFUSAL_ROWS_PER_SECOND, 0
        if self.left <= 0:
            self.dropped += 1
            return False
        self.left -= 1
        return True


async def record_event(gate: PaymentGate, event: PaymentEvent) -> None:
    """Append the row of a refusal, failure or refund (other events need none)."""
    outcome = EVENT_OUTCOMES.get(event.kind)
    if outcome is None or not gate.journal:
        return
    if outcome != "refunded" and not gate._refusal_budget.take(gate.clock.now()):
        return
    payment = event.payment
    row = JournalRow(
        id=f"{outcome}:{uuid.uuid4().hex}",
        time=gate.clock.now(),
        route=route_label(event.request, event.route),
        payer="" if payment is None else payment.payer.lower()[:MAX_TEXT],
        amount=0 if payment is None else payment.amount,
        asset="" if payment is None else payment.asset.address.lower()[:MAX_TEXT],
        network="" if payment is None else payment.network[:MAX_TEXT],
        outcome=outcome,
        detail=(event.code or "")[:MAX_TEXT],
    )
    try:
        await gate._store_call(gate.store.journal_append, row)
    except (StoreError, ConfigurationError, ValueError) as exc:
        logger.error("payments journal append failed: %s", exc)
