"""Pure ASGI middleware: paywall any ASGI app (Starlette, FastAPI, Litestar, Quart, raw ASGI).

::

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import ConfigurationError, PaymentError
from ..gate import PaymentGate, PaymentSession
from ..proxies import TrustedProxies
from ..request import Headers, RequestInfo
from ..routing import RouteTable, check_routes_exist
from ..siwx import split_url
from ..stores.base import MAX_IDEMPOTENT_RESPONSE_BYTES
from ._common import framework_routes, paid_response_headers, render_error, warn_trust_proxy_headers
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AnswerCut",
    "PaymentMiddleware",
    "finish_recording",
    "lifespan_with_checks",
    "public_origin",
    "request_info_from_scope",
    "run_paid_app",
    "send_error",
    "send_json",
    "settling_send",
]

DEFAULT_MAX_BODY = 1 << 20
_NO_PROXIES = TrustedProxies()

logger = logging.getLogger("x402gate")

logger = logging.getLogger("x402gate")


async def lifespan_with_checks(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, check: Callable[[], Awaitable[None]]
) -> None:
    """Run a ``lifespan`` scope through ``app``, with ``check()`` before the app's own start-up.

    When ``check`` raises :class:`ConfigurationError`, the server gets
    ``lifespan.startup.failed`` with its message and the app's start-up never runs, so the
    server stops before it accepts a request."""
    message = await receive()
    if message.get("type") == "lifespan.startup":
        try:
            await check()
        except ConfigurationError as exc:
            logger.error("%s", exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
    first: Message | None = message

    async def replay() -> Message:
        nonlocal first
        if first is not None:
            taken, first = first, None
            return taken
        return await receive()

    await app(scope, replay, send)


def request_info_from_scope(
    scope: Scope,
    body: bytes,
    *,
    trust_proxy_headers: bool = False,
    proxies: TrustedProxies | None = None,
) -> RequestInfo:
    """The neutral request of an ASGI ``http`` scope.

    ``proxies`` (the gate's ``trusted_proxies``) decide the client address and whether
    ``X-Forwarded-Proto``/``-Host`` are read; ``trust_proxy_headers`` (deprecated) trusts the
    peer whatever its address.
    """
    headers = Headers.from_asgi(scope.get("headers", ()))
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    peer = scope.get("client")
    client, forwarded = (proxies or _NO_PROXIES).resolve(
        peer[0] if peer else None,
        headers.get("x-forwarded-for"),
        trust_peer=trust_proxy_headers,
    )
    if forwarded:
        # Only from a proxy the operator vouches for: otherwise any client could choose the
        # URL written into payment requirements.
        scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip() or scheme
        host = headers.get("x-forwarded-host", host or "").split(",")[0].strip() or host
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    root_path = scope.get("root_path", "")
    path = scope.get("path", "/")
    # Servers disagree on whether "path" already includes "root_path" (uvicorn and Starlette's
    # routing do): add the prefix only when it is not there yet.
    if root_path and not path.startswith(root_path):
        path = root_path + path
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"{scheme}://{host}{path}" + (f"?{query}" if query else "")
    return RequestInfo(
        scope.get("method", "GET"),
        scope.get("path", "/"),
        query_string=query,
        headers=headers,
        body=body,
        url=url,
        native=scope,
        client=client,
    )


def public_origin(
    scope: Scope, *, trust_proxy_headers: bool = False, gate: PaymentGate | None = None
) -> str:
    """``scheme://host[:port]`` of the request, as clients see it (no path): one of ``gate``'s
    configured public origins when it has them."""
    info = request_info_from_scope(
        scope,
        b"",
        trust_proxy_headers=trust_proxy_headers,
        proxies=gate.trusted_proxies if gate is not None else None,
    )
    url = gate.public_url(info) if gate is not None else info.url
    return split_url(url)[0]


async def send_json(send: Send, status: int, document: Any) -> None:
    """Send a complete JSON answer (discovery documents and the like)."""
    body = json.dumps(document, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exc: PaymentError, accept: str | None) -> None:
    status, headers, body = render_error(exc, accept)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def settling_send(
    send: Send, gate: PaymentGate, session: PaymentSession, accept: str | None
) -> Send:
    """Wrap ``send`` so the payment is settled when the app starts its answer.

    Only ``http.response.start`` is held: the gate settles (policy ``after``, status < 400) before
    it goes out, and adds the receipt headers. When settlement fails, the client gets the gate's
    402 instead and every later message of the app (its content) is dropped. When the payment
    carried a payment identifier, the answer is also kept (up to the store's cap) for retries.

    Metered routes: usage is read from each body message after it was sent, and the charge is
    committed after the last one (:meth:`PaymentGate.hold_commit`,
    :meth:`PaymentGate.complete_after_send`): the client does not wait for the ledger write, and
    the payer's next request in this process waits for it before reserving.
    """
    blocked = False
    recording = session.idempotency is not None
    status = 0
    headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []
    size = 0
    # Per-second routes: the app's sends and the deadline's end of the answer take turns.
    turn = asyncio.Lock() if session.deadline is not None else None
    watchdog: asyncio.Task[None] | None = None

    async def end_at_deadline() -> None:
        # An app that sends nothing for a while is ended at its paid maximum too, not only at
        # its next chunk. Sleeps of at most a second follow the gate's clock.
        assert turn is not None and session.deadline is not None
        while session.reservation is not None and not session.cut:
            remaining = session.deadline - gate.clock.now()
            if remaining > 0:
                await asyncio.sleep(min(remaining, 1.0))
                continue
            async with turn:
                if session.reservation is not None and not session.cut:
                    with contextlib.suppress(AnswerCut):
                        await deliver(
                            {"type": "http.response.body", "body": b"", "more_body": False}
                        )
            return

    async def send_paid(message: Message) -> None:
        if turn is None:
            await deliver(message)
            return
        async with turn:
            await deliver(message)

    async def deliver(message: Message) -> None:
        nonlocal blocked, recording, status, headers, size, watchdog
        kind = message["type"]
        if session.cut:
            raise AnswerCut  # the answer is over: stop the app from making more
        if kind == "http.response.start":
            try:
                extra = await gate.finish(session, int(message["status"]), recording=recording)
            except PaymentError as exc:
                blocked = True
                await send_error(send, exc, accept)
                return
            final = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            ]
            # Once money moved (policy "before") the receipt goes out whatever the status.
            if extra or message["status"] < 400:
                final = paid_response_headers(final, extra)
                message = dict(message)
                message["headers"] = [
                    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in final
                ]
            status, headers = int(message["status"]), final
            recording = recording and session.idempotency is not None
            await send(message)
            if turn is not None and session.reservation is not None:
                watchdog = asyncio.ensure_future(end_at_deadline())
        elif not blocked:
            if (
                session.deadline is not None
                and kind == "http.response.body"
                and session.reservation is not None
                and gate.answer_overdue(session)
            ):
                # A per-second answer ran its paid maximum: it ends here, without this chunk.
                session.cut = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            if session.reservation is not None and kind == "http.response.body":
                # Usage is read as the answer streams out, each chunk after it went out, so
                # metering delays no byte; nothing is buffered. The charge is committed after
                # the last message (off the client's critical path); hold_commit makes the
                # payer's next request wait for that commit, so it sees the new balance.
                chunk = message.get("body", b"")
                last = not message.get("more_body", False)
                if last:
                    gate.hold_commit(session)
                try:
                    await send(message)
                    if last:
                        # Started before the commit below, which the request's cancellation
                        # (the answer is over) may interrupt.
                        gate.start_delivered(session)
                finally:
                    if chunk:
                        if session.meter is None:
                            session.meter = meter_for_headers(headers)
                        session.meter.feed(chunk)
                    if last:
                        if watchdog is not None and watchdog is not asyncio.current_task():
                            watchdog.cancel()
                        if session.meter is not None:
                            session.meter.close()  # a last event without its blank line counts
                        await gate.complete_after_send(session, _usage(session))
            else:
                await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                # The whole answer is with the server: a retry of the payment is a replay now.
                await gate.delivered(session)
            if recording and kind == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= MAX_IDEMPOTENT_RESPONSE_BYTES:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    recording = False
                    kept = b"".join(chunks) if size <= MAX_IDEMPOTENT_RESPONSE_BYTES else None
                    await gate.record(session, status, headers, kept)
            if session.cut:
                raise AnswerCut

    return send_paid


class AnswerCut(Exception):
    """Raised into an app from ``send`` once its answer was ended at the paid maximum of a
    per-second route (:meth:`PaymentGate.answer_overdue`), so that it stops working for
    nobody. The middleware that wrapped ``send`` swallows it (see :func:`run_paid_app`)."""


async def run_paid_app(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, session: PaymentSession
) -> None:
    """Run ``app`` with a :func:`settling_send` ``send``: an answer ended at its paid maximum
    stops the app, which is the expected end of that request, not an error."""
    try:
        await app(scope, receive, send)
    except Exception:
        # The app's reaction to AnswerCut (possibly wrapped in an exception group, or turned
        # into its own error) comes after a complete answer: nothing more to tell anyone.
        if not session.cut:
            raise
        logger.debug("the answer reached its paid maximum and was ended there")


async def finish_recording(gate: PaymentGate, session: PaymentSession) -> None:
    """After the app returned: charge a metered answer that never completed for what it used,
    and record an answer that never completed as not kept."""
    # A settled answer that never went out whole: a retry of the payment is served instead.
    await gate.delivered(session, complete=False)
    if session.reservation is not None:
        await gate.complete(session, _usage(session))
    if session.done and session.idempotency is not None:
        await gate.record(session, 500, (), None)


def meter_for_headers(headers: list[tuple[str, str]]) -> Any:
    """A usage meter for an answer with these headers (SSE stream or JSON body)."""
    from ..metering import meter_for

    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    return meter_for(content_type)


def _usage(session: PaymentSession) -> Any:
    return session.meter.usage if session.meter is not None else None


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


class PaymentMiddleware:
    """ASGI middleware that charges for the routes in ``routes`` (see :mod:`x402gate.routing`).

    :param max_body_bytes: largest request body read for pricing on a paid route (413 above).
    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param discovery: answer ``GET /.well-known/x402`` with a document listing ``routes``.
    :param check_at_startup: at the lifespan start-up, check ``routes`` against the app's own
        routes and run the gate's start-up checks (see the module docstring).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        gate: PaymentGate,
        routes: Mapping[str, Any] | RouteTable,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        trust_proxy_headers: bool = False,
        discovery: bool = False,
        check_at_startup: bool = True,
    ) -> None:
        self.app = app
        self.gate = gate
        self.routes = routes if isinstance(routes, RouteTable) else RouteTable(gate, routes)
        self.max_body_bytes = max_body_bytes
        self.trust_proxy_headers = warn_trust_proxy_headers(trust_proxy_headers)
        self.discovery = discovery
        self.check_at_startup = check_at_startup
        self._route_problem: str | None = None if check_at_startup else ""  # "": no problem

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
        if self._route_problem != "" and not await self._routes_hold(scope, send):
            return
        if self.discovery and scope["method"] == "GET" and scope["path"] == WELL_KNOWN_PATH:
            # Served before the route table: a catch-all paid route must not put it behind a 402.
            origin = public_origin(
                scope, trust_proxy_headers=self.trust_proxy_headers, gate=self.gate
            )
            await send_json(send, 200, discovery_document(self.gate, self.routes, origin))
            return
        if scope["method"] == "GET" and scope["path"] == CREDIT_PATH:
            headers = Headers.from_asgi(scope.get("headers", ()))
            code, document = await self.gate.credit_status(headers)
            await send_json(send, code, document)
            return
        route = self.routes.match(scope["method"], scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        accept = Headers.from_asgi(scope.get("headers", ())).get("accept")
        try:
            body, disconnected = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            await send_error(
                send,
                PaymentError(413, "request_too_large", "request body too large for a paid route"),
                accept,
            )
            return
        if disconnected:
            return
        info = request_info_from_scope(
            scope,
            body,
            trust_proxy_headers=self.trust_proxy_headers,
            proxies=self.gate.trusted_proxies,
        )
        try:
            session = await self.gate.begin(route, info)
        except PaymentError as exc:
            await send_error(send, exc, accept)
            return
        await self._serve(scope, receive, send, session, body, accept)

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
        await send_error(send, error, accept)
        return False

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session: PaymentSession,
        body: bytes,
        accept: str | None,
    ) -> None:
        scope = dict(scope)
        state = dict(scope.get("state") or {})
        state["payment"] = session.payment
        scope["state"] = state
        scope["x402gate.payment"] = session.payment

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body only the real disconnect is left to report (streaming responses
            # listen for it): hand over to the server's own receive.
            return await receive()

        send_paid = settling_send(send, self.gate, session, accept)
        try:
            await run_paid_app(self.app, scope, replay, send_paid, session)
        finally:
            # An exception, a cancelled request or an app that never answered: charge nothing.
            if not session.done:
                await self.gate.abort(session)
            await finish_recording(self.gate, session)
