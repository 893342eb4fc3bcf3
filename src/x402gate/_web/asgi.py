"""The ASGI driver of a :class:`~x402gate.flow.PaymentFlow`, shared by the ASGI middleware, the
FastAPI adapter and the gateway: reading the request, sending answers, and a ``send`` that hands
the app's answer to the flow.

Internal: nothing here is public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, PaymentError
from ..flow import MAX_HELD_ANSWER_BYTES, Answer
from ..proxies import TrustedProxies
from ..request import Headers, RequestInfo
from ..siwx import split_url
from .middleware import DEFAULT_MAX_BODY
from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ..flow import PaymentFlow
    from ..gate import PaymentGate

__all__ = [
    "DEFAULT_MAX_BODY",
    "AnswerCut",
    "BodyTooLarge",
    "FlowSlot",
    "flow_send",
    "lifespan_with_checks",
    "public_origin",
    "read_body",
    "request_info_from_scope",
    "run_app",
    "run_with_slot",
    "send_answer",
    "send_json",
    "too_large",
]

_NO_PROXIES = TrustedProxies()
logger = logging.getLogger("x402gate")


class AnswerCut(Exception):
    """Raised into an app from ``send`` once its answer was ended at the paid maximum of a
    per-second route, so that it stops working for nobody. The driver swallows it
    (:func:`run_app`)."""


class BodyTooLarge(Exception):
    """The request body is over the configured limit (answered 413 by :func:`too_large`)."""


def too_large() -> PaymentError:
    """The answer to a paid request whose body is over the limit."""
    return PaymentError(413, "request_too_large", "request body too large for a paid route")


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


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, at most ``limit`` bytes (:class:`BodyTooLarge` above); ``None``
    when the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def send_json(send: Send, status: int, document: Any) -> None:
    """Send a complete JSON answer (discovery documents and the like)."""
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    await send_answer(send, Answer(status, headers, body))


async def send_answer(send: Send, answer: Answer) -> None:
    """Send an :class:`~x402gate.flow.Answer` as a complete response."""
    start = {"type": "http.response.start", "status": answer.status}
    start["headers"] = _encoded(answer.headers)
    await send(start)
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def flow_send(send: Send, flow: PaymentFlow) -> Send:
    """``send`` for an app whose payment ``flow`` has begun: its answer goes through the flow.

    ``http.response.start`` is held while the flow settles (policy ``after``) and gets the
    receipt headers; when settlement fails the flow's answer goes out instead and the app's
    content is dropped. Each body message is shown to the flow before it is sent (a per-second
    answer ends at its paid maximum, then :class:`AnswerCut` stops the app) and after.
    """
    # Per-second routes: the app's sends and the deadline's end of the answer take turns.
    turn = asyncio.Lock() if flow.deadline is not None else None
    watchdog: asyncio.Task[None] | None = None

    async def end_at_deadline() -> None:
        # An app that sends nothing for a while is ended at its paid maximum too, not only at
        # its next chunk. Sleeps of at most a second follow the gate's clock.
        assert turn is not None
        while (remaining := flow.remaining()) is not None:
            if remaining > 0:
                await asyncio.sleep(min(remaining, 1.0))
                continue
            async with turn:
                if flow.remaining() is not None:
                    with contextlib.suppress(AnswerCut):
                        await deliver({"type": "http.response.body", "more_body": False})
            return

    # A metered answer paid by a channel voucher is held back (start and body, up to
    # MAX_HELD_ANSWER_BYTES) and measured before its headers go out (flow.holds_answer).
    held: tuple[Message, list[tuple[str, str]]] | None = None
    held_body: list[bytes] = []
    held_size = 0

    async def open_answer(
        message: Message, headers: list[tuple[str, str]], whole: bytes | None
    ) -> bool:
        nonlocal watchdog
        start = await flow.response_start(int(message["status"]), headers, whole)
        if isinstance(start, Answer):
            await send_answer(send, start)
            return False
        await send({**message, "headers": _encoded(start)})
        if turn is not None and flow.remaining() is not None:
            watchdog = asyncio.ensure_future(end_at_deadline())
        return True

    async def deliver(message: Message) -> None:
        nonlocal held, held_size
        if flow.cut:
            raise AnswerCut  # the answer is over: stop the app from making more
        kind = message["type"]
        if kind == "http.response.start":
            raw = message.get("headers", ())
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
            if flow.holds_answer(headers):
                held = (message, headers)
                return
            await open_answer(message, headers, None)
            return
        if kind != "http.response.body":
            if not flow.replaced and held is None:
                await send(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if held is not None:
            held_body.append(body)
            held_size += len(body)
            if more and held_size <= MAX_HELD_ANSWER_BYTES:
                return
            (start, headers), held = held, None
            body = b"".join(held_body)
            held_body.clear()
            if not await open_answer(start, headers, None if more else body):
                return
            message = {"type": "http.response.body", "body": body, "more_body": more}
        step = flow.body(body, not more)
        if step is None:
            return
        chunk, last = step
        if chunk is not body or last == more:
            message = {"type": "http.response.body", "body": chunk, "more_body": not last}
        ok = False
        try:
            await send(message)
            ok = True
        finally:
            if last and watchdog is not None and watchdog is not asyncio.current_task():
                watchdog.cancel()
            await flow.sent(chunk, last, ok=ok)
        if flow.cut:
            raise AnswerCut

    async def send_paid(message: Message) -> None:
        if turn is None:
            await deliver(message)
            return
        async with turn:
            await deliver(message)

    return send_paid


async def run_app(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    flow: Callable[[], PaymentFlow | None],
) -> None:
    """Run ``app``, then close the payment flow ``flow()`` returns (if one began) whatever
    happened: an app that raised or never answered is charged nothing.

    An answer ended at its paid maximum stops the app (:class:`AnswerCut`): the expected end of
    that request, not an error."""
    try:
        await app(scope, receive, send)
    except Exception:
        # The app's reaction to AnswerCut (possibly wrapped in an exception group, or turned
        # into its own error) comes after a complete answer: nothing more to tell anyone.
        begun = flow()
        if begun is None or not begun.cut:
            raise
        logger.debug("the answer reached its paid maximum and was ended there")
    finally:
        begun = flow()
        if begun is not None:
            await begun.close()


class FlowSlot:
    """A request's link from the code inside an app that begins its payment flow (a FastAPI
    dependency) to the layer outside that hands the app's answer to that flow."""

    __slots__ = ("flow", "settings")

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.flow: PaymentFlow | None = None


async def run_with_slot(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, slot: FlowSlot
) -> None:
    """Run ``app``: until a flow is in ``slot`` its messages go out as they are (a free route,
    or an answer made inside the app); after, they go through that flow (:func:`flow_send`)."""
    paid: Send | None = None

    async def send_wrapper(message: Message) -> None:
        nonlocal paid
        if slot.flow is None:
            await send(message)
            return
        if paid is None:
            paid = flow_send(send, slot.flow)
        await paid(message)

    await run_app(app, scope, receive, send_wrapper, lambda: slot.flow)
