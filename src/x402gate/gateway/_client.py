"""The project's own upstream client, now :mod:`x402gate.gateway.clients.builtin` (kept for
imports of this module's names)."""

from __future__ import annotations

from .clients.builtin import (
    KEEPALIVE_EXPIRY,
    READ_BUFFER,
    BuiltinResponse,
    ConnectionPool,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "KEEPALIVE_EXPIRY",
    "READ_BUFFER",
    "BuiltinResponse",
    "ConnectionPool",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
