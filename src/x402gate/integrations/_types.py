"""Deprecated: moved to the internal :mod:`x402gate._web.types` (kept for one release)."""

from __future__ import annotations

from .._web.moved import warn_moved
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

warn_moved(__name__, "x402gate._web.types")
