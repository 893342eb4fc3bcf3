"""The answers to failures of the gate's dependencies, and error codes safe to show clients.

Fail closed: a store, facilitator or chain error never lets content through; it becomes a
503/502 with a sanitized message, and the detail goes to the ``x402gate`` logger.
"""

from __future__ import annotations

import re

from ..errors import FacilitatorUnavailable, PaymentError, StoreError

__all__ = ["failure", "safe_code"]

_CODE_RE = re.compile(r"^[A-Za-z0-9_]{1,80}$")


def safe_code(code: str | None, default: str) -> str:
    """``code`` when it is a well-formed error code, else ``default``."""
    # Facilitators put free text in reason fields; only well-formed codes reach the client.
    return code if code and _CODE_RE.match(code) else default


def failure(exc: Exception) -> PaymentError:
    """The 503/502 answer to a store or facilitator failure: no detail reaches the client."""
    headers = {"Cache-Control": "no-store", "Retry-After": "1"}
    if isinstance(exc, StoreError):
        return PaymentError(
            503, "store_unavailable", "payment store unavailable, try again", headers=headers
        )
    if isinstance(exc, FacilitatorUnavailable):
        return PaymentError(
            503,
            "facilitator_unavailable",
            "payment facilitator unavailable, try again",
            headers=headers,
        )
    return PaymentError(
        502, "facilitator_error", "payment facilitator failed, try again", headers=headers
    )
