"""Forwarding a paid request to its upstream and its answer back, byte for byte.

:class:`Forwarder` is the ASGI app the gateway's :class:`~x402gate.asgi.
PaymentMiddleware` wraps: by the time it runs, the request is paid (or served from credit). It
sends the method, path (rewritten if the route says so), query, body and the client's headers to
the upstream (through an :class:`~x402gate.gateway.clients.UpstreamClient`) — minus
hop-by-hop and payment headers, plus the upstream's injected ones — and passes the upstream's
status, headers and body back as they arrive, chunk by chunk, so server-sent events stream
through (the middleware meters them on the way out).

A route with several targets (:mod:`~x402gate.gateway.upstreams`) tries them in turn: a target
that cannot be reached, does not answer in time or answers 5xx, 429 or 402 is followed by the
next, as long as nothing was sent to the client; the request was paid once, whichever answers.

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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._web.types import Message, Receive, Scope, Send
from ..routing import REST_GROUP, ROUTE_MATCH_KEY, RouteMatch, RoutePattern
from .clients import UpstreamError, UpstreamResponse, UpstreamTimeout
from .config import HOP_BY_HOP, RoutePlan
from .upstreams import FALLBACK_STATUSES, FailureKind, TargetSet, Upstream, UpstreamTarget

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
_ANNOTATE = "x402gate.annotate"
"""Where the payment middleware leaves its note taker (:meth:`PaymentFlow.annotate`)."""

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|\*)\}")


def capture_pattern(key: str) -> re.Pattern[str]:
    """The path regex of a route key, its parameters as named groups (see
    :class:`~x402gate.routing.RoutePattern`, which parses every route key)."""
    return RoutePattern.parse(key).regex


@dataclass(frozen=True, slots=True)
class Target:
    """Where one route's requests go: its targets, and the path rewrite."""

    plan: RoutePlan
    targets: TargetSet
    """The route's targets (with ``targets:`` keyed by model: those of ``"*"``, if any)."""
    capture: re.Pattern[str] | None
    """Set when the route rewrites its path."""
    by_model: Mapping[str, TargetSet] | None = None
    """With ``targets:`` keyed by model: model name → its targets."""
    headers: Mapping[int, tuple[frozenset[bytes], tuple[tuple[bytes, bytes], ...]]] = field(
        init=False
    )
    """``id(upstream)`` → the client headers not forwarded to it (besides those a
    ``Connection`` header names) and the headers added to each request: its injected ones
    (and, on metered routes, ``accept-encoding: identity``: usage is read from the answer as it
    passes, it must not arrive compressed)."""

    def __post_init__(self) -> None:
        sets = [self.targets, *(self.by_model or {}).values()]
        headers = {}
        for choice in (t for s in sets for t in s.targets):
            upstream = choice.upstream
            drop, added = _DROP_REQUEST | upstream.injected_names, upstream.injected
            if self.plan.metered:
                drop = drop | {b"accept-encoding"}
                added = ((b"accept-encoding", b"identity"), *added)
            headers[id(upstream)] = (drop, added)
        object.__setattr__(self, "headers", headers)

    @property
    def upstream(self) -> Upstream:
        """The first target's upstream (a one-upstream route's only one)."""
        return self.targets.targets[0].upstream

    def order(self, model: str | None) -> tuple[UpstreamTarget, ...]:
        """The targets one request tries, in order (none: no target serves ``model``)."""
        if self.by_model is None:
            return self.targets.order()
        chosen = self.by_model.get(model) if model is not None else None
        if chosen is None:
            chosen = self.by_model.get("*")
        return () if chosen is None else chosen.order()

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
        request = _Request(scope["method"], raw_path, scope.get("query_string", b""), body, target)
        order = target.order(request.model() if target.by_model is not None else None)
        if not order:
            # The payment is released: an answer of 400 or more charges nothing.
            await send_problem(send, 400, "unknown_model", "no upstream of this route serves it")
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive)
        try:
            await self._exchange(
                request, order, scope.get("headers") or (), send, watch, scope.get(_ANNOTATE)
            )
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()  # our own cancellation: the client left, nothing else to do
        finally:
            watch.stop()

    async def _exchange(
        self,
        request: _Request,
        order: tuple[UpstreamTarget, ...],
        client_headers: Iterable[tuple[bytes, bytes]],
        send: Send,
        watch: _Watch,
        annotate: Callable[[str], None] | None = None,
    ) -> None:
        """Try the targets in order until one answers; relay that answer (or the last failure).

        A target fails when it cannot be reached, does not answer in time, or answers with a
        status in :data:`~x402gate.gateway.upstreams.FALLBACK_STATUSES`; the next one is tried
        only then, before anything was sent to the client. With breakers (routes with several
        targets), a target whose breaker is open is skipped.
        """
        breakers = request.target.plan.fallback
        index = _next_allowed(order, 0, breakers)
        if index is None:
            watch.stop()
            await send_problem(
                send, 503, "upstream_unavailable", "every upstream of this route is failing"
            )
            return
        while True:
            choice = order[index]
            upstream = choice.upstream
            stats = upstream.stats
            failure: FailureKind | None = None
            response: UpstreamResponse | None = None
            started = time.perf_counter()
            try:
                response = await upstream.pool().request(
                    request.method_bytes,
                    upstream.target(request.raw_path, request.query),
                    request.headers_for(choice, client_headers),
                    request.body_for(choice),
                )
            except UpstreamTimeout:
                failure = "timeout"
            except UpstreamError:
                failure = "unavailable"
            except asyncio.CancelledError:
                upstream.breaker.abandon()
                raise
            if response is not None and response.status_code in FALLBACK_STATUSES:
                failure = "status"
            if failure is None:
                assert response is not None
                elapsed = time.perf_counter() - started
                stats.successes += 1
                stats.latency_seconds_total += elapsed
                if elapsed > stats.latency_seconds_max:
                    stats.latency_seconds_max = elapsed
                if breakers:
                    upstream.breaker.success()
                if annotate is not None:
                    # The payment's journal row names the upstream that served it.
                    annotate(f"upstream={upstream.name}")
                break
            stats.failures[failure] += 1
            if breakers:
                upstream.breaker.failure()
            following = _next_allowed(order, index + 1, breakers)
            if following is None:
                break
            stats.fallbacks += 1
            logger.info(
                "upstream %s failed (%s), trying upstream %s",
                upstream.name,
                failure,
                order[following].upstream.name,
            )
            if response is not None:
                await response.aclose()
            index = following
        if response is None:
            if failure == "timeout":
                logger.warning("upstream %s did not answer in time", upstream.name)
                watch.stop()
                await send_problem(
                    send, 504, "upstream_timeout", "the upstream did not answer in time"
                )
            else:
                logger.warning("upstream %s could not be reached", upstream.name)
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


def _next_allowed(order: tuple[UpstreamTarget, ...], start: int, breakers: bool) -> int | None:
    """The index of the first target from ``start`` its breaker lets through (counting the
    others as skipped); ``None`` if none."""
    for index in range(start, len(order)):
        upstream = order[index].upstream
        if not breakers or upstream.breaker.allow():
            return index
        upstream.stats.skipped += 1
    return None


class _Request:
    """One paid request as the targets receive it: the body and headers made per target."""

    __slots__ = ("_parsed", "body", "method", "method_bytes", "query", "raw_path", "target")

    def __init__(
        self, method: str, raw_path: bytes, query: bytes, body: bytes, target: Target
    ) -> None:
        self.method = method
        self.method_bytes = method.encode("ascii")
        self.raw_path = raw_path
        self.query = query
        self.body = body
        self.target = target
        self._parsed: dict[str, Any] | bool | None = False

    def _json(self) -> dict[str, Any] | None:
        if self._parsed is False:
            try:
                value = json.loads(self.body) if self.body else None
            except ValueError:
                value = None
            self._parsed = value if isinstance(value, dict) else None
        assert self._parsed is not True
        return self._parsed

    def model(self) -> str | None:
        """The model the client asked for (the route's ``model_field``), if a string."""
        field_name = self.target.plan.model_field
        parsed = self._json() if field_name is not None else None
        value = parsed.get(field_name) if parsed is not None and field_name else None
        return value if isinstance(value, str) else None

    def body_for(self, choice: UpstreamTarget) -> bytes:
        """The body sent to ``choice``: the client's, with the model renamed if it says so."""
        field_name = self.target.plan.model_field
        if choice.model is None or field_name is None:
            return self.body
        parsed = self._json()
        if parsed is None or not isinstance(parsed.get(field_name), str):
            return self.body  # no model to rename: the body as sent
        renamed = {**parsed, field_name: choice.model}
        return json.dumps(renamed, ensure_ascii=False, separators=(",", ":")).encode()

    def headers_for(
        self, choice: UpstreamTarget, raw_headers: Iterable[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        drop, added = self.target.headers[id(choice.upstream)]
        return _forwarded_headers(raw_headers, drop, added)


def _forwarded_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
    drop: frozenset[bytes],
    added: tuple[tuple[bytes, bytes], ...],
) -> list[tuple[bytes, bytes]]:
    """The client's headers minus the dropped ones, plus the target's added ones."""
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
    headers.extend(added)
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
