"""Idempotent retries: the x402 ``payment-identifier`` extension.

A payment that carries an identifier reserves it (:func:`begin`) bound to a fingerprint of the
request and payment; its answer is kept (:func:`record`) and replayed to a retry with the same
identifier and fingerprint. Another payment or request under the same identifier is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, PaymentError, StoredAnswer, StoreError
from ..request import RequestInfo
from ..stores.base import MAX_KEPT_BODY_BYTES, IdempotencyOutcome, check_payment_id
from .events import EventKind, PaymentEvent
from .failures import failure
from .model import PaymentSession, Route

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements

    from .engine import PaymentGate

__all__ = [
    "PAYMENT_IDENTIFIER",
    "abandon",
    "begin",
    "drop",
    "fingerprint",
    "payment_id",
    "payment_identifier_extension",
    "record",
]

logger = logging.getLogger("x402gate")

PAYMENT_IDENTIFIER = "payment-identifier"


def payment_identifier_extension(required: bool) -> dict[str, Any]:
    """The x402 ``payment-identifier`` declaration put on 402 answers."""
    return {
        "info": {"required": required},
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "id": {
                    "type": "string",
                    "minLength": 16,
                    "maxLength": 128,
                    "pattern": "^[a-zA-Z0-9_-]+$",
                },
            },
            "required": ["required"],
        },
    }


def payment_id(route: Route, payload: PaymentPayload) -> str | None:
    """The payment identifier the payload carries, checked (400 when malformed or missing
    on a route that requires one); ``None`` when there is none or the route ignores them."""
    if route.payment_identifier == "off":
        return None
    ext = (payload.extensions or {}).get(PAYMENT_IDENTIFIER)
    info = ext.get("info") if isinstance(ext, Mapping) else None
    value = info.get("id") if isinstance(info, Mapping) else None
    if value is None:
        if route.payment_identifier == "required":
            raise PaymentError(
                400, "payment_identifier_required", "this route requires a payment identifier"
            )
        return None
    try:
        return check_payment_id(value)
    except ValueError:
        raise PaymentError(
            400,
            "invalid_payment_identifier",
            "payment identifier must be 16-128 characters of [A-Za-z0-9_-]",
        ) from None


def fingerprint(request: RequestInfo, requirements: PaymentRequirements, auth: Any) -> str:
    # The same identifier may only ever stand for this payment of this request.
    material = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "body": hashlib.sha256(request.body).hexdigest(),
        "terms": requirements.model_dump(mode="json", by_alias=True),
        "payer": auth.payer,
        "nonce": auth.nonce,
        "signature": auth.signature.hex(),
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


async def begin(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    accepts: Sequence[PaymentRequirements],
    payment_id: str,
    fingerprint: str,
) -> PaymentError | None:
    """Reserve the payment identifier, or raise the answer for it (stored, conflict, busy).

    With reconciliation on, the "in progress" answer is returned instead of raised: that
    request may be gone (process killed) with its payment settled, and the claim decides.
    """
    try:
        result = await gate._store_call(
            gate.store.idempotency_begin,
            payment_id,
            fingerprint,
            gate.idempotency_ttl_seconds,
            gate.clock.now(),
        )
    except StoreError as exc:
        logger.error("idempotency store failed: %s", exc)
        raise failure(exc) from None
    if result.outcome is IdempotencyOutcome.NEW:
        return None
    if result.outcome is IdempotencyOutcome.REPLAY and result.response is not None:
        stored = json.loads(result.response)
        await gate._emit(PaymentEvent(EventKind.REPLAYED, request, route, status=stored["status"]))
        raise StoredAnswer(
            int(stored["status"]),
            dict(stored["headers"]),
            base64.b64decode(stored["body"]),
        )
    headers = {"Cache-Control": "no-store"}
    if result.outcome is IdempotencyOutcome.IN_PROGRESS:
        headers["Retry-After"] = "1"
        busy = PaymentError(
            409,
            "payment_identifier_in_progress",
            "a request with this payment identifier is being processed; retry shortly",
            headers=headers,
        )
        if gate.reconciler is None:
            raise busy
        return busy
    await gate._emit(
        PaymentEvent(EventKind.REJECTED, request, route, code="payment_identifier_conflict")
    )
    raise PaymentError(
        409,
        "payment_identifier_conflict",
        "this payment identifier was already used with another payment or request",
        headers=headers,
    )


async def abandon(gate: PaymentGate, idempotency: tuple[str, str] | None) -> None:
    """Give a reserved identifier up: its retries are processed anew."""
    if idempotency is None:
        return
    try:
        await gate._store_call(gate.store.idempotency_abandon, *idempotency)
    except StoreError as exc:
        # The reservation expires with its TTL: retries wait, nothing is charged twice.
        logger.error("idempotency abandon failed: %s", exc)


async def record(
    gate: PaymentGate,
    session: PaymentSession,
    status_code: int,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
) -> None:
    """Keep the answer of a paid request for retries with the same payment identifier.

    Integrations call it once the whole answer is known; ``body=None`` means it could not
    be kept (streamed or too large), and retries then learn the payment was processed.
    """
    idempotency, session.idempotency = session.idempotency, None
    if idempotency is None:
        return
    if body is None or len(body) > MAX_KEPT_BODY_BYTES:
        answer = {
            "status": 409,
            "headers": [["Content-Type", "application/json"], ["Cache-Control", "no-store"]],
            "body": base64.b64encode(
                json.dumps(
                    {
                        "error": "payment_already_processed",
                        "message": "this payment was processed; its answer was not kept",
                    }
                ).encode()
            ).decode(),
        }
    else:
        kept = [
            [k, v]
            for k, v in headers
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        answer = {
            "status": status_code,
            "headers": kept,
            "body": base64.b64encode(body).decode(),
        }
    data = json.dumps(answer, separators=(",", ":")).encode()
    try:
        await gate._store_call(
            gate.store.idempotency_complete, *idempotency, data, gate.clock.now()
        )
    except (StoreError, ConfigurationError) as exc:
        logger.error("could not keep the answer for a payment identifier: %s", exc)


async def drop(gate: PaymentGate, session: PaymentSession) -> None:
    """Abandon the session's identifier, if it still holds one."""
    idempotency, session.idempotency = session.idempotency, None
    await gate._abandon(idempotency)
