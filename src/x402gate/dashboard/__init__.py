"""The operator's dashboard: one opt-in route with the report's figures and charts.

``PaymentGate(..., dashboard=Dashboard(token=...))`` makes every integration (ASGI, FastAPI,
WSGI, Flask, Django and the gateway) answer the dashboard's path (``/x402/dashboard`` by
default) before its paid routes; the dashboard is never charged. It shows what
``x402gate report`` prints (:mod:`x402gate.analytics`) over the last ``days`` days: totals,
revenue per route, top payers, revenue per day, refusal and error rates, p50/p95 latency, and
charts of revenue and requests per day, as one self-contained page (inline SVG and CSS, no
script, nothing fetched from elsewhere: its ``Content-Security-Policy`` forbids it).

Access needs the configured token:

* scripts send ``Authorization: Bearer <token>``; ``?format=json`` (or ``Accept:
  application/json``) gives the figures as the report's JSON;
* a browser gets a one-field sign-in form. Its POST (accepted only when its ``Origin`` or
  ``Referer`` names the page's own host) sets an ``HttpOnly``, ``SameSite=Strict`` cookie
  (``Secure`` over https) that holds an expiry and an HMAC of it keyed by the token, never
  the token itself. Changing the token signs every browser out.

Every comparison is constant-time. Request bodies above 4 KiB are refused unread.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..stores.base import Store

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_PATH",
    "MAX_FORM_BYTES",
    "Dashboard",
    "DashboardAnswer",
    "DashboardRequest",
]

DEFAULT_PATH = "/x402/dashboard"
COOKIE_NAME = "x402gate_dashboard"
MAX_FORM_BYTES = 4096
"""Largest sign-in body read; a longer one is refused (413) without reading it."""

_MIN_TOKEN = 16


@dataclass(frozen=True, slots=True)
class DashboardRequest:
    """What the dashboard needs of a request, whatever the framework.

    ``headers`` is case-insensitive for reads (any mapping the integrations already build:
    :class:`~x402gate.request.Headers`, Starlette's, Django's); ``body`` is read only for a
    POST (at most :data:`MAX_FORM_BYTES`); ``https`` says whether the page was reached over
    TLS (the cookie is then ``Secure``).
    """

    method: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    https: bool = False


@dataclass(frozen=True, slots=True)
class DashboardAnswer:
    """A complete answer: status, headers, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Dashboard:
    """The dashboard's configuration and its request handling.

    :param token: the secret that opens the dashboard (at least 16 characters; from an
        environment variable or a secret store, never from code).
    :param path: where it is served (one path; the sign-in form posts to the same path).
    :param days: the window shown by default (``?days=N`` picks 1 to 400).
    :param top: how many top payers are listed.
    :param session_seconds: how long a browser sign-in lasts.
    """

    def __init__(
        self,
        token: str,
        *,
        path: str = DEFAULT_PATH,
        days: int = 30,
        top: int = 10,
        session_seconds: int = 8 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(token, str) or len(token.strip()) < _MIN_TOKEN:
            raise ConfigurationError(
                f"the dashboard token must be a string of at least {_MIN_TOKEN} characters"
            )
        if not isinstance(path, str) or not path.startswith("/") or "?" in path:
            raise ConfigurationError("the dashboard path must start with '/' and have no query")
        if not 1 <= int(days) <= 400:
            raise ConfigurationError("the dashboard's days must be 1 to 400")
        self._key = hashlib.sha256(b"x402gate dashboard\x00" + token.encode()).digest()
        self._bearer = hashlib.sha256(token.encode()).digest()
        self.path = path.rstrip("/") or "/"
        self.days = int(days)
        self.top = max(1, int(top))
        self.session_seconds = int(session_seconds)
        self.clock = clock

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"Dashboard(path={self.path!r}, days={self.days})"

    def matches(self, path: str) -> bool:
        """Whether ``path`` is the dashboard's."""
        return path == self.path or path == self.path + "/"

    # -- access ---------------------------------------------------------------------------

    def _token_ok(self, given: str) -> bool:
        digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(digest, self._bearer)

    def _cookie_value(self, expires: int) -> str:
        mac = hmac.new(self._key, f"session:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def _cookie_ok(self, headers: Mapping[str, str]) -> bool:
        value = _cookie(headers.get("cookie") or "", COOKIE_NAME)
        if not value or len(value) > 128 or "." not in value:
            return False
        stamp, _, _ = value.partition(".")
        if not stamp.isdigit() or int(stamp) <= self.clock():
            return False
        return hmac.compare_digest(value.encode(), self._cookie_value(int(stamp)).encode())

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """A valid bearer token or sign-in cookie."""
        auth = headers.get("authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            return self._token_ok(given.strip())
        return self._cookie_ok(headers)

    # -- answers --------------------------------------------------------------------------

    def handle(self, request: DashboardRequest, store: Store) -> DashboardAnswer:
        """Answer one request to the dashboard's path (blocking: reads the journal)."""
        from . import page

        method = request.method.upper()
        params = urllib.parse.parse_qs(request.query, max_num_fields=8)
        if method == "POST":
            return self._sign_in(request)
        if method not in ("GET", "HEAD"):
            return page.answer(405, page.message("Method not allowed"), allow=True)
        wants_json = (params.get("format") or [""])[0] == "json" or (
            "application/json" in (request.headers.get("accept") or "")
            and "text/html" not in (request.headers.get("accept") or "")
        )
        if not self.authorized(request.headers):
            if wants_json or request.headers.get("authorization"):
                return _json(401, {"error": "unauthorized"}, bearer=True)
            return page.answer(401, page.sign_in(self.path, ""))
        days = _days(params, self.days)
        now = self.clock()
        report = _report(store, now - days * 86400.0, now)
        if wants_json:
            from ..analytics.render import to_data

            return _json(200, {"days": days, **to_data(report, self.top)})
        body = page.render(report, days=days, top=self.top, path=self.path)
        return page.answer(200, body, head=method == "HEAD")

    async def handle_async(self, request: DashboardRequest, store: Store) -> DashboardAnswer:
        """:meth:`handle` in a worker thread (the journal read blocks)."""
        return await asyncio.to_thread(self.handle, request, store)

    def _sign_in(self, request: DashboardRequest) -> DashboardAnswer:
        from . import page

        if not _same_origin(request.headers):
            return page.answer(403, page.message("Sign-in refused: cross-site request"))
        if len(request.body) > MAX_FORM_BYTES:
            return page.answer(413, page.message("Sign-in form too large"))
        form = urllib.parse.parse_qs(
            request.body.decode("utf-8", "replace"), max_num_fields=4, keep_blank_values=True
        )
        given = (form.get("token") or [""])[0]
        if not given or not self._token_ok(given):
            return page.answer(401, page.sign_in(self.path, "Wrong token."))
        expires = int(self.clock()) + self.session_seconds
        attributes = [
            f"{COOKIE_NAME}={self._cookie_value(expires)}",
            f"Path={self.path}",
            f"Max-Age={self.session_seconds}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if request.https:
            attributes.append("Secure")
        headers = [
            ("Location", self.path),
            ("Set-Cookie", "; ".join(attributes)),
            ("Cache-Control", "no-store"),
            ("Content-Length", "0"),
        ]
        return DashboardAnswer(303, headers, b"")


def _report(store: Store, since: float, until: float) -> Any:
    from ..analytics import build_report

    return build_report(store, since, until)


def _days(params: Mapping[str, list[str]], default: int) -> int:
    raw = (params.get("days") or [""])[0]
    if raw.isdigit() and 1 <= int(raw) <= 400:
        return int(raw)
    return default


def _cookie(header: str, name: str) -> str:
    for part in header[:8192].split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip()
    return ""


def _host_of(url: str) -> str:
    try:
        return (urllib.parse.urlsplit(url).netloc or "").lower()
    except ValueError:
        return ""


def _same_origin(headers: Mapping[str, str]) -> bool:
    """The POST comes from a page of this host: its ``Origin`` (or, without one, its
    ``Referer``) names the ``Host`` it was sent to. Neither header: refused (fail closed)."""
    host = (headers.get("host") or "").lower()
    origin = headers.get("origin") or ""
    source = origin if origin and origin != "null" else headers.get("referer") or ""
    return bool(host) and bool(source) and _host_of(source) == host


def _json(status: int, document: Any, *, bearer: bool = False) -> DashboardAnswer:
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    if bearer:
        headers.append(("WWW-Authenticate", 'Bearer realm="x402gate dashboard"'))
    return DashboardAnswer(status, headers, body)
