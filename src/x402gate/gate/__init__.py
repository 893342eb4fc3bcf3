"""The payment engine: :class:`PaymentGate` and what it works with.

The gate is split by concern (see :mod:`x402gate.gate.engine` for the map); every name other
modules used to import from ``x402gate.gate`` is still importable from here.
"""

from __future__ import annotations

from .admission import IN_FLIGHT_GRACE_SECONDS, SETTLED_IN_FLIGHT_SECONDS
from .challenge import PAYING_HEADERS
from .channels import ChannelSettings
from .charges import COMMIT_WAIT_SECONDS
from .config import HOLD_MARGIN_SECONDS
from .engine import PaymentGate
from .events import EventKind, EventListener, PaymentEvent
from .idempotency import PAYMENT_IDENTIFIER, payment_identifier_extension
from .model import Payment, PaymentIdentifier, PaymentSession, Route, Settlement
from .settlement import GAVE_UP
from .startup import STARTUP_CHECKS_ENV, StartupChecks

__all__ = [
    "COMMIT_WAIT_SECONDS",
    "GAVE_UP",
    "HOLD_MARGIN_SECONDS",
    "IN_FLIGHT_GRACE_SECONDS",
    "PAYING_HEADERS",
    "PAYMENT_IDENTIFIER",
    "SETTLED_IN_FLIGHT_SECONDS",
    "STARTUP_CHECKS_ENV",
    "ChannelSettings",
    "EventKind",
    "EventListener",
    "Payment",
    "PaymentEvent",
    "PaymentGate",
    "PaymentIdentifier",
    "PaymentSession",
    "Route",
    "Settlement",
    "StartupChecks",
    "payment_identifier_extension",
]
