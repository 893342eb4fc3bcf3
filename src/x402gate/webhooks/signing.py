"""The signature of a webhook POST, and its verification by a receiver.

Every POST carries three headers:

* ``X402gate-Event-Id``: the event's stable id (the same on every redelivery: deduplicate on it);
* ``X402gate-Timestamp``: Unix seconds when this attempt was signed;
* ``X402gate-Signature``: ``v1=`` and the lowercase hex of
  ``HMAC-SHA256(secret, f"{timestamp}.{body}")`` over the exact body bytes.

A receiver recomputes the HMAC with its secret, compares it in constant time, and refuses
timestamps further than a few minutes from its own clock (a replayed old POST).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from ..stores.journal import JournalRow

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "event_body",
    "sign",
    "signed_headers",
    "verify_signature",
]

EVENT_ID_HEADER = "X402gate-Event-Id"
TIMESTAMP_HEADER = "X402gate-Timestamp"
SIGNATURE_HEADER = "X402gate-Signature"

DEFAULT_TOLERANCE = 300.0
"""Seconds a signed timestamp may differ from the receiver's clock."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X402gate-Signature`` value of ``body`` signed at ``timestamp``."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str | bytes, event_id: str, body: bytes, now: float) -> dict[str, str]:
    """The headers of one delivery attempt of ``body`` at ``now``."""
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when ``signature`` (the ``X402gate-Signature`` header) signs ``body`` with
    ``secret`` at ``timestamp`` (the ``X402gate-Timestamp`` header), and that timestamp is
    within ``tolerance`` seconds of ``now`` (the receiver's clock by default).

    ``body`` must be the raw bytes received, before any JSON parsing.
    """
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(
        hmac.compare_digest(expected.encode(), part.strip().encode())
        for part in signature.split(",")[:8]
    )


def event_body(row: JournalRow) -> bytes:
    """The JSON body of the event recording ``row``: the same bytes on every delivery."""
    data: dict[str, Any] = {
        "route": row.route,
        "payer": row.payer,
        "amount": str(row.amount),
        "asset": row.asset,
        "network": row.network,
        "scheme": row.scheme,
        "transaction": row.transaction,
        "detail": row.detail,
    }
    event = {"id": row.id, "type": f"payment.{row.outcome}", "created": row.time, "data": data}
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
