"""Pure ASGI middleware: paywall any ASGI app (Starlette, FastAPI, Litestar, Quart, raw ASGI).

::

    from x402gate.asgi import PaymentMiddleware

    app = PaymentMiddleware(app, gate=gate, routes={"GET /weather": 0.01, "POST /v1/chat": rules})

Only ``http`` scopes on a paid route are touched; websocket scopes pass through. At the
``lifespan`` start-up, before the app's own, the middleware checks that every key of ``routes``
matches a route of the app (when the app lists its routes: Starlette, FastAPI, Quart) and runs the
gate's start-up checks (:meth:`PaymentGate.check_startup`); a failure is reported as
``lifespan.startup.failed`` with one message, and the server does not start. Servers that run no
lifespan check the route keys at the first request (while one matches nothing, every request
answers 503 and the app does not run) and leave the gate's checks to the first paid request.
The request body is read once (for prices that look at it) and replayed to the app. With policy
``after``, only ``http.response.start`` is held: the payment is settled when the app starts its
answer with a status below 400 and before any body byte is sent; when settlement fails the client
gets the 402 and none of the app's content. The accepted payment is in ``scope["state"]["payment"]``
(``request.state.payment`` in Starlette and FastAPI). With ``discovery=True`` the middleware also
answers ``GET /.well-known/x402`` with the paid routes (see :mod:`x402gate.discovery`).

Each paid request is one :class:`~x402gate.flow.PaymentFlow`; this module only translates ASGI
messages to it.
"""

from __future__ import annotations

import logging

from ._web.asgi import (
    AnswerCut,
    BodyTooLarge,
    flow_send,
    lifespan_with_checks,
    public_origin,
    read_body,
    request_info_from_scope,
    run_app,
    send_answer,
    send_json,
    too_large,
)
from ._web.common import framework_routes
from ._web.middleware import DEFAULT_MAX_BODY, RouteTableMiddleware
from ._web.types import ASGIApp, Message, Receive, Scope, Send
from .dashboard.web import serve_asgi
from .discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from .errors import ConfigurationError, PaymentError
from .flow import Answer, PaymentFlow
from .observability.metrics import scrape_answer
from .request import Headers
from .routing import ROUTE_MATCH_KEY, check_routes_exist

__all__ = [
    "DEFAULT_MAX_BODY",
    "AnswerCut",
    "PaymentMiddleware",
    "public_origin",
    "request_info_from_scope",
]

logger = logging.getLogger("x402gate")


class PaymentMiddleware(RouteTableMiddleware[ASGIApp]):
    """ASGI middleware that charges for the routes in ``routes`` (see :mod:`x402gate.routing`).

    Its options are those of :class:`~x402gate._web.middleware.RouteTableMiddleware`
    (``gate``, ``routes``, ``max_body_bytes``, ``trust_proxy_headers``, ``discovery``,
    ``check_at_startup``: at the lifespan start-up, see the module docstring).
    """

    _route_problem: str | None = None  # "": the route keys were checked and hold

    def _check_routes(self) -> None:
        if self._route_problem is None:
            found = framework_routes(self.app)
            try:
                if found is not None:
                    check_routes_exist(self.routes, *found)
            except ConfigurationError as exc:
                self._route_problem = str(exc)
                raise
            self._route_problem = ""

    async def check_startup(self) -> None:
        """Every key of ``routes`` matches a route of the app (when it lists them), and the
        gate's start-up checks pass; :class:`ConfigurationError` otherwise."""
        self._check_routes()
        await self.gate.check_startup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.check_at_startup:
            await lifespan_with_checks(self.app, scope, receive, send, self.check_startup)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.check_at_startup and self._route_problem != ""
        if problem and not await self._routes_hold(scope, send):
            return
        method, path = scope["method"], scope["path"]
        if self.gate.telemetry.metrics is not None:
            headers = Headers.from_asgi(scope.get("headers", ()))
            scrape = scrape_answer(self.gate, method, path, headers.get("authorization"))
            if scrape is not None:
                await send_answer(send, scrape)
                return
        if self.gate.dashboard is not None and self.gate.dashboard.matches(path):
            await serve_asgi(self.gate, scope, receive, send)  # never charged
            return
        if method == "GET" and path == WELL_KNOWN_PATH and self.discovery:
            # Served before the route table: a catch-all paid route must not put it behind a 402.
            origin = public_origin(
                scope, trust_proxy_headers=self.trust_proxy_headers, gate=self.gate
            )
            await send_json(send, 200, discovery_document(self.gate, self.routes, origin))
            return
        if method == "GET" and path == CREDIT_PATH:
            headers = Headers.from_asgi(scope.get("headers", ()))
            code, document = await self.gate.credit_status(headers)
            await send_json(send, code, document)
            return
        found = self.routes.find(method, path)
        if found is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            accept = Headers.from_asgi(scope.get("headers", ())).get("accept")
            await send_answer(send, Answer.from_error(too_large(), accept))
            return
        if body is None:
            return  # the client left
        info = request_info_from_scope(
            scope,
            body,
            trust_proxy_headers=self.trust_proxy_headers,
            proxies=self.gate.trusted_proxies,
        )
        flow = PaymentFlow(self.gate, found.route, info)
        answer = flow.challenge() or await flow.begin()
        if answer is not None:
            await send_answer(send, answer)
            return
        scope = dict(scope)
        scope["state"] = {**(scope.get("state") or {}), "payment": flow.payment}
        scope["x402gate.payment"] = flow.payment
        scope["x402gate.annotate"] = flow.annotate
        scope[ROUTE_MATCH_KEY] = found  # matched once: the app behind reads it (the gateway)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body only the real disconnect is left to report (streaming responses
            # listen for it): hand over to the server's own receive.
            return await receive()

        await run_app(self.app, scope, replay, flow_send(send, flow), lambda: flow)

    async def _routes_hold(self, scope: Scope, send: Send) -> bool:
        # A server that ran no lifespan (daphne, uvicorn --lifespan off) gets the route check
        # at its first request instead: with a key that matches nothing, nothing is served.
        try:
            self._check_routes()
        except ConfigurationError as exc:
            logger.error("%s", exc)  # once: later requests find the problem recorded
        if not self._route_problem:
            return True
        accept = Headers.from_asgi(scope.get("headers", ())).get("accept")
        error = PaymentError(
            503, "payment_unavailable", "payments are not available on this server"
        )
        await send_answer(send, Answer.from_error(error, accept))
        return False
