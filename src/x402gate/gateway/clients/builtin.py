"""The project's own upstream client: HTTP/1.1 over asyncio protocols and h11, a keep-alive pool.

The gateway makes one kind of request: a method, a path, headers and a body it already holds,
to one origin, with the answer relayed chunk by chunk. httpx does that through httpcore and
anyio, which cost the gateway ~0.8 ms of CPU per call, as much as the whole upstream spends
serving it. This client keeps the parts that matter (h11 for the wire format, so parsing and
framing stay those of httpcore; TLS with httpx's certificate bundle) and drops the rest:

* a request goes out in one ``write`` (head and body together, one wake-up of the upstream);
* an answer is read from a plain :class:`asyncio.Protocol` (no anyio streams, cancel scopes or
  locks), with reading paused while more than :data:`READ_BUFFER` bytes wait to be relayed;
* each wait has the upstream's timeout (connecting, a free connection, the next bytes);
* connections are kept alive and reused (newest first) for :data:`KEEPALIVE_EXPIRY` seconds of
  idleness, at most ``max_connections`` at once.

It implements :class:`~.base.UpstreamClient` (errors, timeouts and what it never adds are
described there).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import h11

from .base import (
    KEEPALIVE_EXPIRY,
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "KEEPALIVE_EXPIRY",
    "READ_BUFFER",
    "BuiltinResponse",
    "ConnectionPool",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
READ_BUFFER = 256 * 1024
"""Bytes received and not yet relayed above which reading from the upstream pauses."""
MAX_HEAD = 100 * 1024
"""Largest status line and headers accepted (httpcore's limit)."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the upstream, and its h11 state."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.closed = False
        self.idle_since = 0.0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._eof_fed = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_BUFFER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by the pool and the response

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def next_event(self, timeout: float) -> Any:
        """The next h11 event of the answer, waiting at most ``timeout`` for more bytes."""
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                raise UpstreamProtocolError("the upstream's answer is not valid HTTP/1.1") from None
            if event is not h11.NEED_DATA:
                return event
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                conn.receive_data(data)
                if self._paused and self.transport is not None and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
            elif self._eof:
                if conn.their_state is h11.SEND_RESPONSE and not conn.trailing_data[0]:
                    raise UpstreamUnavailable("the upstream closed the connection")
                if self._eof_fed:  # pragma: no cover - h11 answers ConnectionClosed or raises
                    raise UpstreamUnavailable("the upstream closed the connection")
                self._eof_fed = True
                conn.receive_data(b"")
            else:
                await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        waiter = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def reusable(self) -> bool:
        conn = self.h11
        # An answer delimited by the end of the connection leaves h11 DONE too, before
        # connection_lost: the end of input seen is what says the connection is gone.
        if self.closed or self._eof:
            return False
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        if self._chunks or conn.trailing_data[0]:
            return False  # bytes after the answer: nothing an HTTP/1.1 server may send
        conn.start_next_cycle()
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("the upstream did not answer in time"))


class BuiltinResponse(UpstreamResponse):
    """An answer read from one of the pool's connections."""

    __slots__ = ("_complete", "_connection", "_pool", "headers", "status_code")

    def __init__(
        self,
        pool: ConnectionPool,
        connection: _Connection,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._complete = False
        self.status_code = status_code
        self.headers = headers
        """``(name, value)`` pairs as received (names in their original case)."""

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None or self._complete:
            return
        timeout = self._pool.timeout
        while True:
            event = await connection.next_event(timeout)
            kind = type(event)
            if kind is h11.Data:
                if event.data:
                    yield bytes(event.data)
            elif kind is h11.EndOfMessage:
                self._complete = True
                return
            else:  # ConnectionClosed before the end: h11 raises for framed bodies instead
                raise UpstreamProtocolError("the upstream broke off its answer")

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reuse=self._complete)


class ConnectionPool(UpstreamClient):
    """Keep-alive HTTP/1.1 connections to one origin, for the event loop that creates them.

    :param host: the host to connect to (an IP address or an ASCII name).
    :param port: its port.
    :param host_header: the ``Host`` header of every request (``None``: the caller's own).
    :param ssl_context: for ``https://`` upstreams; ``None`` for plain TCP.
    :param timeout: the longest wait for a connection, a free connection, or the next bytes.
    :param max_connections: connections open (in use or idle) at most.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: bytes | None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        max_connections: int = 100,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._idle: list[_Connection] = []
        self._open = 0  # connections in use, idle, or being made
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False

    @classmethod
    def from_options(cls, options: UpstreamOptions) -> ConnectionPool:
        return cls(
            options.host,
            options.port,
            host_header=options.host_header,
            ssl_context=options.ssl_context,
            timeout=options.timeout,
            max_connections=options.max_connections,
            keepalive_expiry=options.keepalive_expiry,
        )

    def __repr__(self) -> str:
        return f"<ConnectionPool {self._open} open, {len(self._idle)} idle>"

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> BuiltinResponse:
        """Send a request (head and body in one write) and read the answer's status and
        headers. ``headers`` must not have ``Content-Length`` (added), nor ``Host`` unless the
        pool has no ``host_header``."""
        host = self.host_header
        head = [(b"host", host), *headers] if host is not None else list(headers)
        if body:
            head.append((b"content-length", b"%d" % len(body)))
        connection = await self._acquire()
        try:
            conn = connection.h11
            try:
                data = conn.send(h11.Request(method=method, target=target, headers=head))
                if body:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                raise UpstreamProtocolError("the request cannot be sent upstream") from None
            if connection.closed:
                raise UpstreamUnavailable("the upstream closed the connection")
            connection.send(data)
            while True:
                event = await connection.next_event(self.timeout)
                kind = type(event)
                if kind is h11.Response:
                    break
                if kind is not h11.InformationalResponse:  # 1xx: the real answer follows
                    raise UpstreamUnavailable("the upstream closed the connection")
        except BaseException:
            self._release(connection, reuse=False)
            raise
        return BuiltinResponse(self, connection, event.status_code, event.headers.raw_items())

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamUnavailable("the connection pool is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry:
                return connection
            self._discard(connection)
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(self.timeout, _expire_pool, waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection or a place just as we were cancelled: pass it on.
                    handed = waiter.result()
                    if handed is None:
                        self._open -= 1
                        self._hand_over_place()
                    else:
                        self._put_back(handed)
                raise
            finally:
                timer.cancel()
            if handed is not None:
                return handed
            # Otherwise a connection was closed and its place given to us: open a new one.
        else:
            self._open += 1
        try:
            return await self._connect(loop)
        except BaseException:
            self._open -= 1
            self._hand_over_place()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        tls = self.ssl_context
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                    ssl_handshake_timeout=self.timeout if tls is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not accept a connection in time") from None
        except OSError:  # refused, unreachable, unknown host, TLS failures (ssl.SSLError)
            raise UpstreamUnavailable("the upstream could not be reached") from None
        return connection

    def _release(self, connection: _Connection, *, reuse: bool) -> None:
        if reuse and not self._closed and connection.reusable():
            self._put_back(connection)
            return
        self._discard(connection)
        self._hand_over_place()

    def _put_back(self, connection: _Connection) -> None:
        """A connection ready for its next request: to the first waiter, or kept idle."""
        if connection.closed or self._closed:
            self._discard(connection)
            self._hand_over_place()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1

    def _hand_over_place(self) -> None:
        """A place is free: give it to the first waiter still waiting (it opens a connection)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their answer is closed."""
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamUnavailable("the connection pool is closed"))


def _expire_pool(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("no upstream connection was free in time"))
