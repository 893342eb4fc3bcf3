"""WSGI middleware: paywall any WSGI app (Flask, Django, Falcon, Bottle, Pyramid, plain WSGI).

::

    app = PaymentMiddleware(app, gate=gate, routes={"GET /weather": 0.01, "POST /v1/chat": rules})

Requests on a paid route have their body read once (bounded, for prices that look at it) and
replayed to the app in ``wsgi.input``. The app's ``start_response`` is held: the payment is
settled (policy ``after``, status below 400) before the status line, any header or a single body
byte reaches the server, including for apps that call ``start_response`` lazily from inside a
generator. When settlement fails the client gets the gate's answer and the app's content is
discarded. The accepted payment is in ``environ["x402gate.payment"]``.

Each paid request is one :class:`~x402gate.flow.PaymentFlow`, driven through its sync steps:
this module only translates WSGI to it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

from ._web.body import close_iterable
from ._web.common import framework_routes, render_error
from ._web.middleware import RouteTableMiddleware
from ._web.types import StartResponse, WSGIApp, WSGIEnviron
from ._web.wsgi import (
    DEFAULT_MAX_BODY,
    PAYMENT_ENVIRON_KEY,
    WSGIFlowResponse,
    answer_response,
    base_url_of,
    environ_headers,
    environ_text,
    read_body,
    request_info_from_environ,
    status_line,
)
from .dashboard.web import serve_wsgi
from .discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from .errors import PaymentError
from .flow import Answer, PaymentFlow
from .observability.metrics import scrape_answer
from .routing import check_routes_exist

__all__ = [
    "DEFAULT_MAX_BODY",
    "PaymentMiddleware",
    "base_url_of",
    "error_response",
    "request_info_from_environ",
]


def error_response(
    start_response: StartResponse, exc: PaymentError, accept: str | None
) -> list[bytes]:
    """Answer with the gate's error (402, 400, 413, 503, ...); returns the body iterable."""
    status, headers, body = render_error(exc, accept)
    start_response(status_line(status), headers)
    return [body]


def _json(start_response: StartResponse, code: int, document: Any, **headers: str) -> list[bytes]:
    body = json.dumps(document).encode()
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(
        status_line(code), fields + [(k.replace("_", "-"), v) for k, v in headers.items()]
    )
    return [body]


class PaymentMiddleware(RouteTableMiddleware[WSGIApp]):
    """WSGI middleware that charges for the routes in ``routes`` (see :mod:`x402gate.routing`).

    Its options are those of :class:`~x402gate._web.middleware.RouteTableMiddleware`
    (``gate``, ``routes``, ``max_body_bytes``, ``trust_proxy_headers``, ``discovery``,
    ``check_at_startup``). WSGI has no start-up event, so ``check_at_startup`` runs when the
    middleware is built: every key of ``routes`` must match a route of the app (when it lists
    them: Flask's ``url_map``, so wrap the app after its routes are registered) and the gate's
    start-up checks (:meth:`~x402gate.gate.PaymentGate.check_startup`) must pass; a failure
    raises :class:`~x402gate.errors.ConfigurationError`.
    """

    def check_when_built(self) -> None:
        found = framework_routes(self.app)
        if found is not None:
            check_routes_exist(self.routes, *found)
        self.gate.check_startup_sync()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ_text(environ.get("PATH_INFO", "") or "/")
        if self.gate.telemetry.metrics is not None:
            auth = environ.get("HTTP_AUTHORIZATION")
            scrape = scrape_answer(self.gate, method, path, auth)
            if scrape is not None:
                return answer_response(start_response, scrape)
        if self.gate.dashboard is not None and self.gate.dashboard.matches(path):
            return serve_wsgi(self.gate, environ, start_response)  # never charged
        if self.discovery and method == "GET" and path == WELL_KNOWN_PATH:
            return self._discovery(environ, start_response)
        if method == "GET" and path == CREDIT_PATH:
            code, document = self.gate.credit_status_sync(environ_headers(environ))
            return _json(start_response, code, document, Cache_Control="no-store")
        route = self.routes.match(method, path)
        if route is None:
            return self.app(environ, start_response)
        try:
            body = read_body(environ, self.max_body_bytes)
            info = request_info_from_environ(
                environ,
                body,
                trust_proxy_headers=self.trust_proxy_headers,
                proxies=self.gate.trusted_proxies,
            )
        except PaymentError as exc:
            return error_response(start_response, exc, environ.get("HTTP_ACCEPT"))
        flow = PaymentFlow(self.gate, route, info)
        answer = flow.begin_sync()
        if isinstance(answer, Answer):
            return answer_response(start_response, answer)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ[PAYMENT_ENVIRON_KEY] = flow.payment
        response = WSGIFlowResponse(flow, start_response)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, response.start_response)
            return response.respond(result)
        except BaseException:
            # The app failed before its answer went out: charge nothing (nothing is undone once
            # settled), and still close what it returned (PEP 3333).
            try:
                if result is not None:
                    close_iterable(result)
            finally:
                flow.close_sync()
            raise

    def _discovery(self, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        base = base_url_of(environ, trust_proxy_headers=self.trust_proxy_headers, gate=self.gate)
        document = discovery_document(self.gate, self.routes, base)
        # Public terms, meant for crawlers.
        return _json(
            start_response,
            200,
            document,
            Cache_Control="public, max-age=300",
            Access_Control_Allow_Origin="*",
        )
