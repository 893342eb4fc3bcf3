"""What happened to a paid request, told to the listeners added with
:meth:`~x402gate.gate.PaymentGate.on_event`.

Every kind the gate emits is an :class:`EventKind`; docs/concepts.md has the table of when each
is emitted and which fields it sets. A listener's failure is logged and never breaks a payment.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..request import RequestInfo
from .model import Payment, Route

__all__ = ["EventKind", "EventListener", "PaymentEvent", "emit"]

logger = logging.getLogger("x402gate")


class EventKind(StrEnum):
    """The kinds of :class:`PaymentEvent`; a ``str`` too, so ``kind == "settled"`` holds."""

    CHALLENGED = "challenged"
    """A 402 answered a request without payment."""
    REJECTED = "rejected"
    """A payment was malformed, for other terms, invalid or refused."""
    VERIFIED = "verified"
    """A payment was claimed and verified (or credit reserved): the handler is about to run."""
    SETTLED = "settled"
    """The payment is on chain (or a recovered payment was answered with its receipt)."""
    SETTLE_FAILED = "settle_failed"
    """The facilitator refused to settle: nothing was charged and a 402 goes out instead."""
    RELEASED = "released"
    """The handler failed or the payment was refused later: nothing charged, claim released."""
    RECOVERED = "recovered"
    """A retry of a payment found settled on chain whose first answer was lost."""
    REPLAYED = "replayed"
    """A retry with a known payment identifier got the stored answer (``status``: its status)."""
    CHARGED = "charged"
    """A metered request was charged what it used (``amount``, in atomic units)."""
    REFUNDED = "refunded"
    """A metered request's credit reservation went back to the payer, uncharged."""
    ERROR = "error"
    """A store, facilitator or chain failure (``code`` says which step failed)."""


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What happened to a paid request; given to listeners added with :meth:`PaymentGate.on_event`.

    ``kind`` is an :class:`EventKind`. ``code`` is the error code of a rejection or failure,
    ``status`` the HTTP status answered (never a charge), ``amount`` what was charged, in the
    asset's atomic units (``charged`` events only).
    """

    kind: EventKind
    request: RequestInfo
    route: Route
    payment: Payment | None = None
    code: str | None = None
    status: int | None = None
    amount: int | None = None


EventListener = Callable[[PaymentEvent], "Awaitable[None] | None"]


async def emit(listeners: Sequence[EventListener], event: PaymentEvent) -> None:
    """Give ``event`` to every listener, awaiting async ones; a failing listener is logged."""
    for listener in listeners:
        try:
            result = listener(event)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a listener must never break a payment
            logger.exception("x402gate event listener failed on %s", event.kind)
