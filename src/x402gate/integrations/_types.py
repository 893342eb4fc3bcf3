"""Moved to :mod:`x402gate._web.types`; kept so that older internal imports still resolve."""

from .._web.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    StartResponse,
    WSGIApp,
    WSGIEnviron,
)

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
    "WSGIEnviron",
]
