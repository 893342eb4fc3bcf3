"""Moved to :mod:`x402gate._web.common`; kept so that older internal imports still resolve."""

from .._web.common import (
    AppRoutes,
    framework_routes,
    paid_response_headers,
    render_error,
    route_refused,
    wants_html,
    warn_trust_proxy_headers,
)

__all__ = [
    "AppRoutes",
    "framework_routes",
    "paid_response_headers",
    "render_error",
    "route_refused",
    "wants_html",
    "warn_trust_proxy_headers",
]
