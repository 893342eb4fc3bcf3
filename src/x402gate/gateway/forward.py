"""Forwarding a paid request to its upstream and its answer back, byte for byte.

:class:`Forwarder` is the ASGI app the gateway's :class:`~x402gate.asgi.
PaymentMiddleware` wraps: by the time it runs, the request is paid (or served from credit). It
sends the method, path (rewritten if the route says so), query, body and the client's headers to
the upstream (through an :class:`~x402gate.gateway.clients.UpstreamClient`) — minus
hop-by-hop and payment headers, plus the upstream's injected ones — and passes the upstream's
status, headers and body back as they arrive, chunk by chunk, so server-sent events stream
through (the middleware meters them on the way out).

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
import ssl
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from .._web.types import Message, Receive, Scope, Send
from ..routing import REST_GROUP, ROUTE_MATCH_KEY, RouteMatch, RoutePattern
from .clients import (
    DEFAULT_CLIENT,
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamResponse,
    UpstreamTimeout,
    client_class,
)
from .config import HOP_BY_HOP, RoutePlan, UpstreamSpec

if TYPE_CHECKING:
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
    "host",  # the upstream's is written instead
    "content-length",  # recomputed from the body actually sent
    "expect",
    # The payment is the gateway's business: the upstream never sees the client's money.
    "payment-signature",
    "x-payment",
    "x402gate-session",
    "sign-in-with-x",
    # Written by the client, they would let it choose the address or host an upstream believes
    # it is serving; the gateway is the upstream's client, and client addresses stay private.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
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
_DROP_RESPONSE = frozenset(h.encode() for h in DROPPED_RESPONSE_HEADERS)
_NOT_IN_TARGET = re.compile(rb"[^\x21-\x22\x24-\x7e]")  # visible ASCII but "#"


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


class Upstream:
    """One upstream: origin, path prefix, injected headers, timeout, a client per event loop.

    The injected header values are secrets; they are read here only to build requests.

    :param client: which :class:`~x402gate.gateway.clients.UpstreamClient` forwards
        (``gateway.upstream_client``: ``aiohttp``, ``httpx`` or ``builtin``).
    """

    def __init__(self, name: str, spec: UpstreamSpec, *, client: str = DEFAULT_CLIENT) -> None:
        self.name = name
        self.client_name = client
        self._client_class = client_class(client)  # a missing library fails the start
        base = httpx.URL(spec.url)  # validated by the config; only parsed here
        self.origin = f"{base.scheme}://{base.netloc.decode('ascii')}"
        self.tls = base.scheme == "https"
        self.host = base.raw_host.decode("ascii")
        self.port = base.port or (443 if self.tls else 80)
        self.host_header = base.netloc  # what httpx writes: the host, and a port not the default
        self.prefix = base.raw_path.rstrip(b"/")
        self.injected: tuple[tuple[bytes, bytes], ...] = tuple(
            (k.lower().encode("latin-1"), v.get_secret_value().encode("latin-1"))
            for k, v in spec.headers.items()
        )
        self.injected_names = frozenset(name for name, _ in self.injected)
        self.drop = _DROP_REQUEST | self.injected_names
        """Client headers never forwarded to this upstream: its injected ones are its own."""
        self.timeout = spec.timeout
        self.max_connections = spec.max_connections
        self._ssl: ssl.SSLContext | None = None
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UpstreamClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"Upstream({self.name!r})"  # not the URL or the headers: logs show reprs

    def pool(self) -> UpstreamClient:
        """The upstream client of the running event loop (connections belong to one loop).

        Every client keeps no cookies (one client's would go out with every other client's
        requests) and follows no redirects (they would carry our credentials elsewhere).
        """
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            if self.tls and self._ssl is None:
                # httpx's verification (certifi's bundle); the environment's certificate
                # settings, like its proxies and .netrc credentials, are not ours to add.
                self._ssl = httpx.create_ssl_context(trust_env=False)
                self._ssl.set_alpn_protocols(["http/1.1"])
            options = UpstreamOptions(
                self.host,
                self.port,
                # An injected Host (a virtual host behind the URL's address) replaces the URL's.
                host_header=None if b"host" in self.injected_names else self.host_header,
                ssl_context=self._ssl if self.tls else None,
                timeout=self.timeout,
                max_connections=self.max_connections,
            )
            pool = self._client_class.from_options(options)
            self._pools[loop] = pool
        return pool

    def target(self, raw_path: bytes, query: bytes) -> bytes:
        """The upstream request target for a request path (already percent-encoded) and query.

        Bytes a request target cannot hold (controls, spaces, non-ASCII, which some servers
        let through) and ``#`` (which would start a fragment) are percent-encoded: the upstream
        gets the path the route table matched, as a valid request line.
        """
        target = self.prefix + raw_path + b"?" + query if query else self.prefix + raw_path
        if _NOT_IN_TARGET.search(target) is not None:
            target = _NOT_IN_TARGET.sub(_percent_encode, target)
        return target

    def url(self, raw_path: bytes, query: bytes) -> str:
        """The full upstream URL of :meth:`target` (for messages and tests; never logged)."""
        return self.origin + self.target(raw_path, query).decode("latin-1")

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.aclose()


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|\*)\}")


def capture_pattern(key: str) -> re.Pattern[str]:
    """The path regex of a route key, its parameters as named groups (see
    :class:`~x402gate.routing.RoutePattern`, which parses every route key)."""
    return RoutePattern.parse(key).regex


@dataclass(frozen=True, slots=True)
class Target:
    """Where one route's requests go."""

    plan: RoutePlan
    upstream: Upstream
    capture: re.Pattern[str] | None
    """Set when the route rewrites its path."""
    drop: frozenset[bytes] = field(init=False)
    """Client headers not forwarded (besides those a ``Connection`` header names)."""
    added: tuple[tuple[bytes, bytes], ...] = field(init=False)
    """Headers added to every request: the upstream's injected ones (and, on metered routes,
    ``accept-encoding: identity``: usage is read from the answer as it passes, it must not
    arrive compressed)."""

    def __post_init__(self) -> None:
        drop, added = self.upstream.drop, self.upstream.injected
        if self.plan.metered:
            drop = drop | {b"accept-encoding"}
            added = ((b"accept-encoding", b"identity"), *added)
        object.__setattr__(self, "drop", drop)
        object.__setattr__(self, "added", added)

    def raw_path(self, scope: Scope, params: Mapping[str, str] | None = None) -> bytes | None:
        """The upstream path, percent-encoded; ``None`` when the rewrite cannot apply.

        ``params`` are the path parameters the route table found (``"*"``: the rest of a
        ``/*`` key); without them the path is matched again."""
        if self.plan.path is None:
            raw = scope.get("raw_path")
            if raw:
                return bytes(raw).split(b"?", 1)[0]
            return quote(scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")
        values = params
        if values is None:
            assert self.capture is not None
            match = self.capture.match(scope["path"])
            if match is None:  # pragma: no cover - the route table matched this path
                return None
            values = {**match.groupdict(), "*": match.groupdict().get(REST_GROUP) or ""}

        def fill(placeholder: re.Match[str]) -> str:
            name = placeholder.group(1)
            if name == "*":
                return quote(values.get("*") or "", safe="/")
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
        # The payment middleware leaves its match in the scope: the request is matched once.
        found = scope.get(ROUTE_MATCH_KEY)
        if not isinstance(found, RouteMatch):
            found = self.table.find(scope["method"], scope["path"])
        target = self.targets.get(id(found.route)) if found is not None else None
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
        assert found is not None
        raw_path = target.raw_path(scope, found.params)
        if raw_path is None:  # pragma: no cover - see Target.raw_path
            await send_problem(send, 404, "not_found", "no route of this gateway matches")
            return
        upstream = target.upstream
        headers = _forwarded_headers(scope.get("headers") or (), target)
        request_target = upstream.target(raw_path, scope.get("query_string", b""))
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive)
        try:
            await self._exchange(
                upstream, scope["method"], request_target, headers, body, send, watch
            )
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()  # our own cancellation: the client left, nothing else to do
        finally:
            watch.stop()

    async def _exchange(
        self,
        upstream: Upstream,
        method: str,
        request_target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        send: Send,
        watch: _Watch,
    ) -> None:
        try:
            response = await upstream.pool().request(
                method.encode("ascii"), request_target, headers, body
            )
        except UpstreamTimeout:
            logger.warning("upstream %s did not answer in time", upstream.name)
            watch.stop()
            await send_problem(send, 504, "upstream_timeout", "the upstream did not answer in time")
            return
        except UpstreamError as exc:
            logger.warning("upstream %s unreachable: %s", upstream.name, type(exc).__name__)
            watch.stop()
            await send_problem(
                send, 502, "upstream_unavailable", "the upstream could not be reached"
            )
            return
        try:
            await self._relay(upstream, method, response, send, watch)
        finally:
            await response.aclose()  # also after a disconnect: the connection goes back or away

    async def _relay(
        self,
        upstream: Upstream,
        method: str,
        response: UpstreamResponse,
        send: Send,
        watch: _Watch,
    ) -> None:
        status = response.status_code
        if status == 402:
            # The client pays the gateway; an upstream asking for money is the operator's
            # problem, and its terms must not reach a client that would try to pay them here.
            logger.warning("upstream %s answered 402 Payment Required", upstream.name)
            watch.stop()
            await send_problem(send, 502, "upstream_error", "the upstream refused the request")
            return
        raw = response.headers
        drop = _DROP_RESPONSE
        length: bytes | None = None
        lowered = []
        for name, value in raw:
            name = name.lower()
            if name == b"connection":
                drop = drop | _connection_tokens(((name, value),))
            elif name == b"content-length":
                length = value
            lowered.append((name, value))
        headers = [(k, v) for k, v in lowered if k not in drop]
        bodiless = method == "HEAD" or status in (204, 304)
        expected = int(length) if length and length.isdigit() and not bodiless else None
        # Sending the start is when the middleware settles the payment (and credits a metered
        # one): a disconnect meanwhile must not cut that short, only what follows.
        watch.hold()
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        finally:
            watch.release()
        sent = 0
        closed = False
        try:
            async for chunk in response.aiter_raw():
                sent += len(chunk)
                # With a known length the last chunk closes the answer: one message less. The
                # loop still runs to the end, so the client sees the message end and keeps the
                # connection for the next request (closing early would cost a TCP handshake).
                closed = expected is not None and sent >= expected
                if closed:
                    watch.stop()  # the server reports the end of a complete answer as a disconnect
                await send({"type": "http.response.body", "body": chunk, "more_body": not closed})
        except UpstreamError as exc:
            logger.warning(
                "upstream %s broke off its answer after %d bytes: %s",
                upstream.name,
                sent,
                type(exc).__name__,
            )
            return  # uvicorn closes the connection: the client sees the answer was cut
        if closed:
            return
        if expected is not None and sent < expected:  # pragma: no cover - h11 raises first
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


def _forwarded_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], target: Target
) -> list[tuple[bytes, bytes]]:
    """The client's headers minus the dropped ones, plus the target's added ones."""
    drop = target.drop
    headers = []
    named: list[bytes] | None = None
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered == b"connection":
            named = named or []
            named.append(value)
        elif lowered not in drop:
            headers.append((name, value))
    if named:  # a Connection header names more hop-by-hop headers: drop those too
        tokens = _connection_tokens((b"connection", value) for value in named)
        headers = [(k, v) for k, v in headers if k.lower() not in tokens]
    headers.extend(target.added)
    return headers


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
