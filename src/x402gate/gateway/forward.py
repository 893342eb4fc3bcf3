"""Forwarding a paid request to its upstream and its answer back, byte for byte.

:class:`Forwarder` is the ASGI app the gateway's :class:`~x402gate.integrations.asgi.
PaymentMiddleware` wraps: by the time it runs, the request is paid (or served from credit). It
sends the method, path (rewritten if the route says so), query, body and the client's headers to
the upstream with httpx — minus hop-by-hop and payment headers, plus the upstream's injected
ones — and passes the upstream's status, headers and body back as they arrive, chunk by chunk,
so server-sent events stream through (the middleware meters them on the way out).

Failures charge nothing: an upstream answer of 400 or more goes back as it is (the middleware
then releases the payment), an upstream that cannot be reached gets a 502 and one that does not
answer in time a 504, both before anything was sent. A client that disconnects has its upstream
request closed at once. An upstream that breaks off an answer already under way cannot be
undone: the client's connection is closed too, so the answer is visibly cut, not silently short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ..integrations._types import Message, Receive, Scope, Send
from .config import HOP_BY_HOP, RoutePlan, UpstreamSpec

if TYPE_CHECKING:
    from ..gate import Route
    from ..routing import RouteTable

__all__ = [
    "DROPPED_REQUEST_HEADERS",
    "DROPPED_RESPONSE_HEADERS",
    "Forwarder",
    "Target",
    "Upstream",
    "send_problem",
]

logger = logging.getLogger("x402gate.gateway")

DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "host",  # httpx writes the upstream's
    "content-length",  # recomputed from the body actually sent
    "expect",
    # The payment is the gateway's business: the upstream never sees the client's money.
    "payment-signature",
    "x-payment",
    "x402gate-session",
    "sign-in-with-x",
}
"""Client headers never forwarded (besides those a ``Connection`` header names)."""

DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {
    # Only the gateway speaks for payments: an upstream must not spoof receipts or sessions.
    "payment-required",
    "payment-response",
    "x-payment-response",
    "x402gate-session",
}
"""Upstream headers never passed back (besides those a ``Connection`` header names)."""


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


_DROP_REQUEST = frozenset(h.encode() for h in DROPPED_REQUEST_HEADERS)
_URL_CACHE_SIZE = 512
_DROP_RESPONSE = frozenset(h.encode() for h in DROPPED_RESPONSE_HEADERS)


class Upstream:
    """One upstream: base URL, injected headers, timeout, an httpx connection pool per loop.

    The injected header values are secrets; they are read here only to build requests.
    """

    def __init__(self, name: str, spec: UpstreamSpec) -> None:
        self.name = name
        base = httpx.URL(spec.url)
        # Kept as text: parsing one string is three times cheaper than URL.copy_with, and the
        # request path is already percent-encoded.
        self.origin = f"{base.scheme}://{base.netloc.decode('ascii')}"
        self.prefix = base.raw_path.rstrip(b"/").decode("ascii")
        self.injected: tuple[tuple[bytes, bytes], ...] = tuple(
            (k.lower().encode("latin-1"), v.get_secret_value().encode("latin-1"))
            for k, v in spec.headers.items()
        )
        self.injected_names = frozenset(name for name, _ in self.injected)
        self.timeout = httpx.Timeout(spec.timeout).as_dict()
        self.limits = httpx.Limits(
            max_connections=spec.max_connections,
            max_keepalive_connections=spec.max_connections,
        )
        self._urls: dict[tuple[bytes, bytes], httpx.URL] = {}
        self._transports: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"Upstream({self.name!r})"  # not the URL or the headers: logs show reprs

    def transport(self) -> httpx.AsyncHTTPTransport:
        """The connection pool of the running event loop (httpx pools are bound to one).

        The transport, not an ``httpx.AsyncClient``: a client keeps the cookies upstreams set
        and would send one client's cookies with every other client's requests; it would also
        follow redirects with our credentials. The transport does neither, and costs less.
        """
        loop = asyncio.get_running_loop()
        transport = self._transports.get(loop)
        if transport is None:
            # The environment's proxies and .netrc credentials are not ours to add.
            transport = httpx.AsyncHTTPTransport(limits=self.limits, trust_env=False)
            self._transports[loop] = transport
        return transport

    def url(self, raw_path: bytes, query: bytes) -> httpx.URL:
        """The upstream URL for a request path (already percent-encoded) and query."""
        key = (raw_path, query)
        url = self._urls.get(key)
        if url is None:
            # An API is called on a few paths over and over: parse each once (URLs are
            # immutable), within a bound, since clients choose the paths and queries.
            text = self.origin + self.prefix + raw_path.decode("latin-1")
            url = httpx.URL(f"{text}?{query.decode('latin-1')}" if query else text)
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        transport = self._transports.pop(asyncio.get_running_loop(), None)
        if transport is not None:
            await transport.aclose()


_SEGMENT_PARAM = re.compile(r"^(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|:([A-Za-z_][A-Za-z0-9_]*))$")
_REST = "x402gate_rest"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|\*)\}")


def capture_pattern(key: str) -> re.Pattern[str]:
    """The path pattern of a route key with named groups for its parameters (and ``{*}``).

    It mirrors :func:`x402gate.routing.compile_pattern`, which decides *whether* a route
    matches; this one only reads *what* matched, for path rewrites.
    """
    head, _, rest = key.strip().partition(" ")
    pattern = rest.strip() if rest else head
    segments = pattern.strip("/").split("/") if pattern != "/" else []
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "*" and index == len(segments) - 1:
            return re.compile("^" + "".join(parts) + rf"(?:/(?P<{_REST}>.*))?$")
        match = _SEGMENT_PARAM.match(segment)
        if match:
            parts.append(rf"/(?P<{match.group(1) or match.group(2)}>[^/]+)")
        else:
            parts.append("/" + r"[^/]*".join(re.escape(p) for p in segment.split("*")))
    return re.compile("^" + "".join(parts) + "/?$")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one route's requests go."""

    plan: RoutePlan
    upstream: Upstream
    capture: re.Pattern[str] | None
    """Set when the route rewrites its path."""

    def raw_path(self, scope: Scope) -> bytes | None:
        """The upstream path, percent-encoded; ``None`` when the rewrite cannot apply."""
        if self.plan.path is None:
            raw = scope.get("raw_path")
            if raw:
                return bytes(raw).split(b"?", 1)[0]
            return quote(scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")
        assert self.capture is not None
        match = self.capture.match(scope["path"])
        if match is None:  # pragma: no cover - the route table matched this path
            return None
        values = match.groupdict()

        def fill(placeholder: re.Match[str]) -> str:
            name = placeholder.group(1)
            if name == "*":
                return quote(values.get(_REST) or "", safe="/")
            return quote(values.get(name) or "", safe="")

        path = _PLACEHOLDER.sub(fill, self.plan.path)
        return quote(path, safe="/%:@!$&'()*+,;=-._~").encode("ascii")


def _json_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()


async def send_problem(send: Send, status: int, code: str, message: str) -> None:
    """A complete JSON error answer from the gateway itself (never an upstream's text)."""
    body = _json_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Forwarder:
    """The ASGI app behind the payment middleware: one paid request in, one upstream call out.

    :param table: the gateway's route table (the middleware's own): the route it matches is the
        route that was paid, so the upstream is looked up from the very same match.
    :param targets: ``id(route)`` → :class:`Target`.
    """

    def __init__(
        self,
        table: RouteTable,
        targets: Mapping[int, Target],
        *,
        on_startup: Any = None,
        on_shutdown: Any = None,
    ) -> None:
        self.table = table
        self.targets = dict(targets)
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
            return
        route: Route | None = self.table.match(scope["method"], scope["path"])
        target = self.targets.get(id(route)) if route is not None else None
        if target is None:
            await send_problem(send, 404, "not_found", "no route of this gateway matches")
            return
        if "x402gate.payment" not in scope:
            # Only the payment middleware sends requests here; fail closed if anything else did.
            logger.error("a request for %s reached the forwarder unpaid", target.plan.key)
            await send_problem(send, 500, "gateway_error", "the gateway is misconfigured")
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client left
        raw_path = target.raw_path(scope)
        if raw_path is None:  # pragma: no cover - see Target.raw_path
            await send_problem(send, 404, "not_found", "no route of this gateway matches")
            return
        request = self._request(scope, target, raw_path, body)
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive)
        try:
            await self._exchange(target.upstream, request, send, watch)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()  # our own cancellation: the client left, nothing else to do
        finally:
            watch.stop()

    def _request(self, scope: Scope, target: Target, raw_path: bytes, body: bytes) -> httpx.Request:
        upstream = target.upstream
        raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        drop = _DROP_REQUEST | upstream.injected_names | _connection_tokens(raw_headers)
        headers = [(k, v) for k, v in raw_headers if k.lower() not in drop]
        if target.plan.metered:
            # Usage is read from the answer as it passes: it must not arrive compressed.
            headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        headers.extend(upstream.injected)
        url = upstream.url(raw_path, scope.get("query_string", b""))
        return httpx.Request(
            scope["method"],
            url,
            headers=headers,
            content=body,
            extensions={"timeout": upstream.timeout},
        )

    async def _exchange(
        self, upstream: Upstream, request: httpx.Request, send: Send, watch: _Watch
    ) -> None:
        try:
            response = await upstream.transport().handle_async_request(request)
        except httpx.TimeoutException:
            logger.warning("upstream %s did not answer in time", upstream.name)
            watch.stop()
            await send_problem(send, 504, "upstream_timeout", "the upstream did not answer in time")
            return
        except httpx.HTTPError as exc:
            logger.warning("upstream %s unreachable: %s", upstream.name, type(exc).__name__)
            watch.stop()
            await send_problem(
                send, 502, "upstream_unavailable", "the upstream could not be reached"
            )
            return
        try:
            await self._relay(upstream, request.method, response, send, watch)
        finally:
            await response.aclose()  # also after a disconnect: the connection goes back or away

    async def _relay(
        self,
        upstream: Upstream,
        method: str,
        response: httpx.Response,
        send: Send,
        watch: _Watch,
    ) -> None:
        if response.status_code == 402:
            # The client pays the gateway; an upstream asking for money is the operator's
            # problem, and its terms must not reach a client that would try to pay them here.
            logger.warning("upstream %s answered 402 Payment Required", upstream.name)
            watch.stop()
            await send_problem(send, 502, "upstream_error", "the upstream refused the request")
            return
        raw = response.headers.raw
        drop = _DROP_RESPONSE | _connection_tokens(raw)
        headers = [(k.lower(), v) for k, v in raw if k.lower() not in drop]
        length = response.headers.get("content-length")
        bodiless = method == "HEAD" or response.status_code in (204, 304)
        expected = int(length) if length and length.isdigit() and not bodiless else None
        # Sending the start is when the middleware settles the payment (and credits a metered
        # one): a disconnect meanwhile must not cut that short, only what follows.
        watch.hold()
        try:
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
        finally:
            watch.release()
        sent = 0
        closed = False
        try:
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                sent += len(chunk)
                # With a known length the last chunk closes the answer: one message less. The
                # loop still runs to the end, so httpx sees the message end and keeps the
                # connection for the next request (closing early would cost a TCP handshake).
                closed = expected is not None and sent >= expected
                if closed:
                    watch.stop()  # the server reports the end of a complete answer as a disconnect
                await send({"type": "http.response.body", "body": chunk, "more_body": not closed})
        except httpx.HTTPError as exc:
            logger.warning(
                "upstream %s broke off its answer after %d bytes: %s",
                upstream.name,
                sent,
                type(exc).__name__,
            )
            return  # uvicorn closes the connection: the client sees the answer was cut
        if closed:
            return
        if expected is not None and sent < expected:
            logger.warning("upstream %s sent %d of %d bytes", upstream.name, sent, expected)
            return
        watch.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_startup is not None:
                        await self.on_startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.on_shutdown is not None:
                        await self.on_shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


class _Watch:
    """Cancels the request's task when the client disconnects before the answer is complete.

    uvicorn drops what is sent after a disconnect without a word: only listening for it tells
    the gateway to stop the upstream (an LLM generating for nobody still costs money). Plain
    asyncio rather than a task group: this runs on every request, and an anyio task group costs
    ten times as much.

    :meth:`stop` must be called before the last message of a complete answer (servers then
    report the end of the exchange as a disconnect too); between :meth:`hold` and
    :meth:`release` a disconnect is only noted, and acted on at the release.
    """

    __slots__ = ("_holding", "_pending", "_task", "_watcher", "gone", "stopped")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self._task = task
        self.gone = False
        self.stopped = False
        self._holding = False
        self._pending = False
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that fails to say: nothing to act on, nothing to log twice
            return
        self._pending = True
        self._act()

    def _act(self) -> None:
        # Checked and acted on with no await in between: no race with stop() or release().
        if self._pending and not self._holding and not self.stopped:
            self.gone = True
            self._task.cancel()

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        self._holding = False
        self._act()

    def stop(self) -> None:
        self.stopped = True
        self._watcher.cancel()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (the middleware already read it: one message), or ``None`` when
    the client left."""
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
