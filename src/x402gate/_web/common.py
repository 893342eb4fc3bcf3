"""What every web adapter shares: rendering gate answers, decorating paid responses, and
reading the routes of a framework app."""

from __future__ import annotations

import html
import json
import logging
import threading
import warnings
from collections.abc import (
    Iterable,
)
from typing import Any

from ..errors import ConfigurationError, PaymentError, StoredAnswer
from ..protocol import EXPOSED_HEADERS
from ..ratelimit import RATE_LIMIT_HEADERS
from ..routing import AppRoute

__all__ = [
    "AppRoutes",
    "framework_routes",
    "paid_response_headers",
    "render_error",
    "route_refused",
    "wants_html",
    "warn_trust_proxy_headers",
]


logger = logging.getLogger("x402gate")
_refusals: set[str] = set()  # the refusals logged already; bounded below
_refusals_lock = threading.Lock()


def route_refused(where: str, exc: ConfigurationError) -> PaymentError:
    """The answer of a paid request whose route the gate refuses to build (a decorator-declared
    route the start-up check could not see, e.g. a server that ran no ASGI lifespan).

    A server misconfiguration: the handler never runs, the client gets ``503
    payment_unavailable``, and the problem is logged once (not with every request)."""
    message = f"{where}: {exc}"
    with _refusals_lock:
        first = message not in _refusals
        if first and len(_refusals) < 1024:  # each is a route of the app: few; kept bounded
            _refusals.add(message)
    if first:
        logger.error("%s", message)
    return PaymentError(503, "payment_unavailable", "payments are not available on this server")


def warn_trust_proxy_headers(value: bool) -> bool:
    """``trust_proxy_headers`` as given, with a deprecation warning when it is on."""
    if value:
        warnings.warn(
            "trust_proxy_headers is deprecated: it believes X-Forwarded-* from any peer. Give the "
            "PaymentGate trusted_proxies=[...] (and public_origin=...) instead",
            DeprecationWarning,
            stacklevel=3,
        )
    return bool(value)


def wants_html(accept: str | None) -> bool:
    """True when the client prefers an HTML page (a browser), not JSON."""
    if not accept:
        return False
    accept = accept.lower()
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


RATE_LIMITED_EXPOSED = ", ".join((EXPOSED_HEADERS, *RATE_LIMIT_HEADERS))
"""What a browser's script may read of a 429: the payment headers and the rate limit's."""


def render_error(
    exc: PaymentError, accept: str | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body for an answer the gate raised."""
    if isinstance(exc, StoredAnswer):
        stored = [(k, v) for k, v in exc.headers.items() if k.lower() != "content-length"]
        stored.append(("Content-Length", str(len(exc.raw_body))))
        return exc.status_code, stored, exc.raw_body
    headers = dict(exc.headers)
    headers.setdefault("Cache-Control", "no-store")
    headers["Access-Control-Expose-Headers"] = (
        RATE_LIMITED_EXPOSED if exc.status_code == 429 else EXPOSED_HEADERS
    )
    if wants_html(accept):
        title = "Payment required" if exc.status_code == 402 else f"Error {exc.status_code}"
        body = (
            "<!doctype html><html><head><meta charset=utf-8><title>"
            f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(exc.message)}</p>"
            "<p>This resource is paid per request with the x402 protocol: use an x402 client "
            "(the payment terms are in the <code>PAYMENT-REQUIRED</code> header).</p>"
            "</body></html>"
        ).encode()
        headers["Content-Type"] = "text/html; charset=utf-8"
    else:
        body = json.dumps(exc.body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(body))
    return exc.status_code, list(headers.items()), body


def paid_response_headers(
    existing: Iterable[tuple[str, str]], payment_headers: dict[str, str]
) -> list[tuple[str, str]]:
    """Headers of a paid response: the handler's, the receipt, CORS exposure, private caching."""
    out: list[tuple[str, str]] = []
    cache_control: str | None = None
    expose: str | None = None
    for name, value in existing:
        low = name.lower()
        if low == "cache-control":
            cache_control = value if cache_control is None else f"{cache_control}, {value}"
        elif low == "access-control-expose-headers":
            expose = value if expose is None else f"{expose}, {value}"
        else:
            out.append((name, value))
    out.extend(payment_headers.items())
    if not cache_control:
        cache_control = "private"
    elif "private" not in cache_control.lower() and "no-store" not in cache_control.lower():
        cache_control = f"{cache_control}, private"
    out.append(("Cache-Control", cache_control))
    out.append(
        (
            "Access-Control-Expose-Headers",
            f"{expose}, {EXPOSED_HEADERS}" if expose else EXPOSED_HEADERS,
        )
    )
    return out


AppRoutes = tuple[list[AppRoute], str]
"""The routes of a framework app, and how to name the app in a message."""

_WRAPPER_DEPTH = 16  # middleware layers walked through to find the app that lists its routes


def framework_routes(app: Any) -> AppRoutes | None:
    """The routes of the framework app ``app`` is or wraps, when it lists them: Starlette and
    FastAPI (``app.routes``), Flask and Quart (``app.url_map``). ``None`` for anything else
    (a raw ASGI/WSGI callable), whose routes cannot be known."""
    current = app
    for _ in range(_WRAPPER_DEPTH):
        if current is None:
            return None
        owner = getattr(current, "__self__", None)  # app.wsgi_app / app.asgi_app, bound
        url_map = getattr(current, "url_map", None) or getattr(owner, "url_map", None)
        if url_map is not None and callable(getattr(url_map, "iter_rules", None)):
            return _werkzeug_routes(url_map), f"the {type(owner or current).__name__} app"
        routes = getattr(current, "routes", None)
        if isinstance(routes, list | tuple) and all(hasattr(r, "matches") for r in routes):
            return _starlette_routes(routes), "the Starlette app"
        current = getattr(current, "app", None)
    return None


def _werkzeug_routes(url_map: Any) -> list[AppRoute]:
    adapter = url_map.bind("localhost")

    def matcher(method: str, path: str) -> bool:
        try:
            adapter.match(path, method=method)
        except Exception:  # NotFound, MethodNotAllowed, a redirect: not this path as written
            return False
        return True

    return [
        AppRoute(
            rule.rule,
            frozenset(rule.methods) if rule.methods else None,
            matcher,
        )
        for rule in url_map.iter_rules()
    ]


def _starlette_routes(routes: Iterable[Any]) -> list[AppRoute]:
    found = []
    for route in routes:
        if type(route).__name__ == "WebSocketRoute":
            continue  # never an HTTP request
        if type(route).__name__ == "Host":
            # Matched on the Host header, which a route key does not name: its routes count.
            found.extend(_starlette_routes(getattr(route, "routes", ())))
            continue
        matches = getattr(route, "matches", None)
        methods = getattr(route, "methods", None)
        regex = getattr(route, "path_regex", None)
        if type(route).__name__ in ("Route", "APIRoute", "Mount") and regex is not None:
            # What their matches() does for the path, without building a scope per probe.
            def matcher(method: str, path: str, regex: Any = regex, methods: Any = methods) -> bool:
                return bool(regex.match(path)) and (not methods or method in methods)

            matches = matcher
        else:

            def fallback(method: str, path: str, matches: Any = matches) -> bool:
                scope: dict[str, Any] = {"type": "http", "method": method, "path": path}
                scope.update(root_path="", headers=[])
                try:
                    match, _ = matches(scope)
                except Exception:  # a route class that needs more of a scope: not provable
                    return False
                return getattr(match, "name", None) == "FULL"

            matches = fallback if callable(matches) else None
        template = str(getattr(route, "path", ""))
        if type(route).__name__ == "Mount" or (hasattr(route, "routes") and not methods):
            template = template.rstrip("/") + "/{path}"
        found.append(
            AppRoute(
                template,
                frozenset(m.upper() for m in methods) if methods else None,
                matches,
            )
        )
    return found
