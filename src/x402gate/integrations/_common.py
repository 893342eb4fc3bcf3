"""Deprecated: moved to the internal :mod:`x402gate._web.common` (kept for one release)."""

from __future__ import annotations

from .._web.common import (
    AppRoutes,
    framework_routes,
    paid_response_headers,
    render_error,
    route_refused,
    wants_html,
    warn_trust_proxy_headers,
)
from .._web.moved import warn_moved

__all__ = [
    "AppRoutes",
    "framework_routes",
    "paid_response_headers",
    "render_error",
    "route_refused",
    "wants_html",
    "warn_trust_proxy_headers",
]

warn_moved(__name__, "x402gate._web.common")
