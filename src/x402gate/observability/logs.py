"""The payment log: one line per payment outcome on the ``x402gate.payments`` logger.

Outcomes are logged at INFO (``challenged``, a 402 to a request without payment, at DEBUG) with
the route's label, the payer, the amount (atomic units), the asset, the network, the
transaction and, for refusals and failures, the error code. Nothing else of the request goes
in: never a header, a signature, a session token or a secret. Each record also carries these
fields as attributes (``record.x402gate``, a dict), which :class:`JsonFormatter` writes as one
JSON object per line.

Enable it like any logger, e.g. ``logging.getLogger("x402gate").setLevel(logging.INFO)`` with a
handler, a Django ``LOGGING`` entry or Flask's ``dictConfig`` (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..gate.events import EventKind

if TYPE_CHECKING:
    from ..gate.events import PaymentEvent

__all__ = ["PAYMENTS_LOGGER", "JsonFormatter", "PaymentLog", "event_fields"]

PAYMENTS_LOGGER = "x402gate.payments"

_DEBUG_KINDS = frozenset({EventKind.CHALLENGED})
_WARNING_KINDS = frozenset({EventKind.ERROR})


def event_fields(event: PaymentEvent, route: str) -> dict[str, Any]:
    """The loggable fields of ``event``: only what identifies the payment, never a secret."""
    fields: dict[str, Any] = {"event": str(event.kind), "route": route}
    payment = event.payment
    if payment is not None:
        fields["payer"] = payment.payer
        fields["amount"] = payment.amount
        fields["asset"] = payment.asset.address
        fields["network"] = payment.asset.network
        if payment.transaction:
            fields["transaction"] = payment.transaction
        if payment.from_credit:
            fields["from_credit"] = True
    if event.amount is not None:
        fields["amount"] = event.amount
    if event.code is not None:
        fields["code"] = event.code
    if event.status is not None:
        fields["status"] = event.status
    return fields


class PaymentLog:
    """Writes each payment outcome to the ``x402gate.payments`` logger (see the module)."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(PAYMENTS_LOGGER)

    def record(self, event: PaymentEvent, route: str) -> None:
        kind = event.kind
        if kind in _DEBUG_KINDS:
            level = logging.DEBUG
        elif kind in _WARNING_KINDS:
            level = logging.WARNING
        else:
            level = logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        fields = event_fields(event, route)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        self.logger.log(level, "payment %s %s", kind, text, extra={"x402gate": fields})


_ISO = "%Y-%m-%dT%H:%M:%S"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the payment fields.

    A payment log record's fields (route, payer, amount, ...) are top-level keys; other records
    (the gate's errors, the gateway's) carry the message only, plus ``exc_info`` text if any.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        document: dict[str, Any] = {
            "time": f"{time.strftime(_ISO, created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "x402gate", None)
        if isinstance(fields, dict):
            document.update(fields)
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"), default=str)
