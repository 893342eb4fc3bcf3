"""Deprecated: moved to :mod:`x402gate.asgi` (this path is kept for one release)."""

from __future__ import annotations

from .._web.asgi import (
    DEFAULT_MAX_BODY,
    AnswerCut,
    lifespan_with_checks,
    public_origin,
    request_info_from_scope,
    send_answer,
    send_json,
)
from .._web.moved import warn_moved
from .._web.types import Send
from ..asgi import PaymentMiddleware
from ..errors import PaymentError
from ..flow import Answer

__all__ = [
    "DEFAULT_MAX_BODY",
    "AnswerCut",
    "PaymentMiddleware",
    "lifespan_with_checks",
    "public_origin",
    "request_info_from_scope",
    "send_error",
    "send_json",
]


async def send_error(send: Send, exc: PaymentError, accept: str | None) -> None:
    """Send the answer of ``exc`` as a complete response."""
    await send_answer(send, Answer.from_error(exc, accept))


warn_moved(__name__, "x402gate.asgi")
