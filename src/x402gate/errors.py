"""The one error tree of x402gate.

::

    X402GateError
    ├── ConfigurationError      wrong settings, found at start-up or when a route is built
    ├── StoreError              a replay store or credit ledger failed (driver errors wrapped)
    ├── FacilitatorError        a facilitator could not be reached or answered nonsense
    │   └── FacilitatorUnavailable   connection refused, timeout: worth retrying later (503)
    └── PaymentError            an HTTP answer for the client: status, code, body and headers

``PaymentError`` is framework-neutral: integrations only translate it into their response type.
Messages of store and facilitator errors are meant for logs; what the client sees is always the
sanitized text of a ``PaymentError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConfigurationError",
    "FacilitatorError",
    "FacilitatorUnavailable",
    "PaymentError",
    "StoreError",
    "StoredAnswer",
    "X402GateError",
]


class X402GateError(Exception):
    """Base class of every error raised by x402gate."""


class ConfigurationError(X402GateError, ValueError):
    """A setting is missing or wrong (bad price, address, network, store URL, ...)."""


class StoreError(X402GateError):
    """A store backend failed; the request is answered 503 and never served for free."""


class FacilitatorError(X402GateError):
    """A facilitator answered with an error or with a body that is not a valid x402 answer (502)."""

    status_code = 502


class FacilitatorUnavailable(FacilitatorError):
    """A facilitator could not be reached in time (503)."""

    status_code = 503


class PaymentError(X402GateError):
    """An answer to send to the client instead of running the handler.

    ``code`` is a stable machine-readable reason (x402 error codes where one exists),
    ``message`` a sanitized human-readable sentence; neither ever contains secrets or raw
    exception text from a driver or facilitator.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self._body = dict(body) if body is not None else None

    @property
    def body(self) -> dict[str, Any]:
        """JSON body for the client."""
        if self._body is not None:
            return self._body
        return {"error": self.code, "message": self.message}


class StoredAnswer(PaymentError):
    """The answer already given to this payment, sent again verbatim (x402 ``payment-identifier``).

    A client that retries a paid request with the same payment identifier and the same payment
    gets the stored status, headers and body, without the handler running or a second charge.
    """

    def __init__(self, status_code: int, headers: Mapping[str, str], raw_body: bytes) -> None:
        super().__init__(status_code, "stored_answer", "stored answer", headers=headers)
        self.raw_body = raw_body
