"""The payment log: one line per payment outcome on the ``x402gate.payments`` logger.

Outcomes are logged at INFO: ``settled``, ``charged``, ``refunded``, ``rejected`` (a refusal,
with its code), ``settle_failed``, ``recovered``, ``replayed``; ``error`` (a store or
facilitator failure) at WARNING. The steps before an outcome are DEBUG: ``challenged`` (a 402
to a request without payment), ``verified`` (the handler is about to run) and ``released``
(the claim of a payment that was not charged). So a paid request makes one INFO line. Each has
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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..gate.events import EventKind

if TYPE_CHECKING:
    from ..gate.events import PaymentEvent

__all__ = ["LEVELS", "PAYMENTS_LOGGER", "JsonFormatter", "PaymentLog", "event_fields"]

PAYMENTS_LOGGER = "x402gate.payments"

LEVELS: dict[EventKind, int] = {
    **dict.fromkeys(EventKind, logging.INFO),
    # Steps on the way to an outcome, not outcomes: a paid request's INFO line is its
    # settlement (or its refusal, or its failure), one line per request.
    EventKind.CHALLENGED: logging.DEBUG,
    EventKind.VERIFIED: logging.DEBUG,
    EventKind.RELEASED: logging.DEBUG,
    EventKind.ERROR: logging.WARNING,
}
"""The level each kind of outcome is logged at by default (``PaymentLog(levels=...)``)."""


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


class _Message:
    """A payment record's message, ``payment settled route=... payer=...``: formatted only
    when a handler formats the record (a record no handler writes costs no text)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        fields = self.fields
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        return f"payment {fields['event']} {text}"


class PaymentLog:
    """Writes each payment outcome to the ``x402gate.payments`` logger (see the module).

    :param logger: where the records go (the ``x402gate.payments`` logger by default).
    :param levels: the level of some kinds instead of :data:`LEVELS`' (``{"verified":
        logging.INFO}`` adds a line when a payment lets the handler run).
    """

    __slots__ = ("levels", "logger")

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        levels: Mapping[str, int] | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger(PAYMENTS_LOGGER)
        self.levels: dict[str, int] = {k.value: v for k, v in LEVELS.items()}
        if levels:
            for kind, level in levels.items():
                self.levels[EventKind(kind).value] = int(level)

    def record(self, event: PaymentEvent, route: str) -> None:
        level = self.levels[event.kind]
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        fields = event_fields(event, route)
        # Built here rather than by logger.log: the caller's frame would always be this line,
        # and looking it up is most of what a log call costs.
        record = logger.makeRecord(
            logger.name, level, __file__, 0, _Message(fields), (), None, "record"
        )
        record.x402gate = fields
        logger.handle(record)


_ISO = "%Y-%m-%dT%H:%M:%S"
# One encoder for every record: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _one_shot_encoder() -> Callable[[dict[str, Any]], str]:
    """``_ENCODER.encode`` without its per-call set-up: ``JSONEncoder.encode`` builds the C
    encoder anew for every document (a fifth of what a payment line's formatting costs). Built
    once here with ``_ENCODER``'s options (compact separators, ASCII escapes, ``default=str``,
    no circular check: a record's fields are flat); ``_ENCODER.encode`` where the C
    accelerator is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    escape = getattr(json.encoder, "c_encode_basestring_ascii", None)
    if make is None or escape is None:
        return _ENCODER.encode
    # (markers, default, encoder, indent, key separator, item separator, sort_keys,
    #  skipkeys, allow_nan): the arguments JSONEncoder.iterencode passes.
    chunks = make(None, str, escape, None, ":", ",", False, False, True)
    join = "".join

    def encode(document: dict[str, Any]) -> str:
        return join(chunks(document, 0))

    return encode


_encode = _one_shot_encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the payment fields.

    A payment log record's fields (route, payer, amount, ...) are top-level keys; other records
    (the gate's errors, the gateway's) carry the message only, plus ``exc_info`` text if any.
    """

    _second = -1
    _stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime per second, not per record
            self._stamp = time.strftime(_ISO, time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "x402gate", None)
        if isinstance(fields, dict) and isinstance(record.msg, _Message):
            message = f"payment {fields['event']}"  # the rest is in the fields beside it
        else:
            message = record.getMessage()
        document: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if isinstance(fields, dict):
            document.update(fields)
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        return _encode(document)
