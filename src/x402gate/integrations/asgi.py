"""Deprecated: moved to :mod:`x402gate.asgi` (this path is kept for one release)."""

from __future__ import annotations

from .._web.asgi import (
    DEFAULT_MAX_BODY,
    AnswerCut,
    lifespan_with_checks,
    public_origin,
    request_info_from_scope,
    send_json,
)
from .._web.moved import warn_moved
from ..asgi import PaymentMiddleware

__all__ = [
    "DEFAULT_MAX_BODY",
    "AnswerCut",
    "PaymentMiddleware",
    "lifespan_with_checks",
    "public_origin",
    "request_info_from_scope",
    "send_json",
]

warn_moved(__name__, "x402gate.asgi")
