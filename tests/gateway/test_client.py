"""The gateway's upstream client against raw asyncio servers: framing, keep-alive, limits,
timeouts and failures, and that no error message carries a header value."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from x402gate.gateway.clients import UpstreamClient
from x402gate.gateway.clients.builtin import (
    ConnectionPool,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """A TCP server on a free loopback port that counts its connections."""
    state = Server()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader, state: Server) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    state.requests.append(head + body)
    return head + body


def answering(*responses: bytes, close: bool = False) -> Callable[[Server], Handler]:
    """A handler answering each request on a connection with the next response, cyclically."""

    def make(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index = 0
            while True:
                await read_request(reader, state)
                writer.write(responses[index % len(responses)])
                await writer.drain()
                index += 1
                if close:
                    return

        return handler

    return make


@contextlib.asynccontextmanager
async def upstream(
    make: Callable[[Server], Handler], **options: float
) -> AsyncIterator[tuple[Server, ConnectionPool]]:
    holder: list[Server] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await make(holder[0])(reader, writer)

    async with serve(handler) as state:
        holder.append(state)
        pool = ConnectionPool(
            "127.0.0.1",
            state.port,
            host_header=f"127.0.0.1:{state.port}".encode(),
            timeout=options.get("timeout", 5.0),
            max_connections=int(options.get("max_connections", 10)),
            keepalive_expiry=options.get("keepalive_expiry", 5.0),
        )
        try:
            yield state, pool
        finally:
            await pool.aclose()


async def fetch(pool: UpstreamClient, body: bytes = b"") -> tuple[int, bytes]:
    response = await pool.request(b"POST", b"/v1/x?a=1", [(b"x-api-key", b"sk-secret")], body)
    try:
        return response.status_code, b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


async def test_a_request_goes_out_whole_and_the_answer_comes_back() -> None:
    async with upstream(answering(OK)) as (state, pool):
        assert await fetch(pool, b'{"a":1}') == (200, b"hello")
    request = state.requests[0]
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{state.port}".encode() in head
    assert b"x-api-key: sk-secret" in head and b"content-length: 7" in head
    assert body == b'{"a":1}'


async def test_a_pool_without_a_host_header_sends_the_callers() -> None:
    async with upstream(answering(OK)) as (state, pool):
        pool.host_header = None
        response = await pool.request(b"GET", b"/", [(b"Host", b"api.internal")])
        await response.aclose()
    head = state.requests[0].lower()
    assert head.count(b"host:") == 1 and b"host: api.internal" in head


async def test_connections_are_kept_alive_and_reused() -> None:
    async with upstream(answering(OK)) as (state, pool):
        for _ in range(5):
            assert await fetch(pool) == (200, b"hello")
        assert pool.idle_connections == 1
    assert state.connections == 1


async def test_concurrent_requests_open_connections_up_to_the_limit() -> None:
    def make(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader, state)
                await asyncio.sleep(0.05)
                writer.write(OK)
                await writer.drain()

        return handler

    async with upstream(make, max_connections=2) as (state, pool):
        results = await asyncio.gather(*(fetch(pool) for _ in range(6)))
        assert results == [(200, b"hello")] * 6
        assert pool.open_connections <= 2
    assert state.connections == 2


async def test_waiting_for_a_free_connection_times_out() -> None:
    def hold(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await reader.read()  # the body never comes

        return handler

    async with upstream(hold, max_connections=1, timeout=0.3) as (state, pool):
        streaming = await pool.request(b"GET", b"/", [])  # holds the only connection
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await fetch(pool)
        assert 0.25 < loop.time() - start < 2
        await streaming.aclose()
        assert pool.open_connections == 0
    assert state.connections == 1


async def test_a_response_with_connection_close_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with upstream(answering(closing, close=True)) as (state, pool):
        assert await fetch(pool) == (200, b"ok")
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle_connections == 0
    assert state.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async with upstream(answering(OK, close=True)) as (state, pool):
        assert await fetch(pool) == (200, b"hello")
        for _ in range(500):  # the server's close arrives while the connection is idle
            if pool._idle[0].closed:
                break
            await asyncio.sleep(0.01)
        assert await fetch(pool) == (200, b"hello")
    assert state.connections == 2


async def test_idle_connections_expire() -> None:
    async with upstream(answering(OK), keepalive_expiry=0.0) as (state, pool):
        await fetch(pool)
        await fetch(pool)
    assert state.connections == 2


async def test_chunked_answers_stream_chunk_by_chunk() -> None:
    gate = asyncio.Event()

    def make(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handler

    async with upstream(make) as (_, pool):
        response = await pool.request(b"GET", b"/", [])
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"first"  # before the rest exists
        gate.set()
        assert [chunk async for chunk in chunks] == [b"second"]
        await response.aclose()
        assert pool.idle_connections == 1


async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        pool = ConnectionPool("127.0.0.1", port, host_header=b"x", timeout=2)
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
    assert str(port) not in str(caught.value)
    assert pool.open_connections == 0


async def test_an_upstream_that_does_not_answer_times_out() -> None:
    def silent(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            await asyncio.sleep(10)

        return handler

    async with upstream(silent, timeout=0.2) as (_, pool):
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await fetch(pool)
        assert 0.15 < loop.time() - start < 2
        assert pool.open_connections == 0


async def test_a_body_broken_off_is_a_protocol_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    async with upstream(answering(cut, close=True)) as (_, pool):
        response = await pool.request(b"GET", b"/", [])
        received = b""
        with pytest.raises(UpstreamProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
        await response.aclose()
        assert received == b"only this"
        assert pool.open_connections == 0


async def test_a_connection_closed_before_an_answer_is_unavailable() -> None:
    def hang_up(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)

        return handler

    async with upstream(hang_up) as (_, pool):
        with pytest.raises(UpstreamUnavailable):
            await fetch(pool)


async def test_garbage_is_a_protocol_error() -> None:
    async with upstream(answering(b"SPAM\r\n\r\n", close=True)) as (_, pool):
        with pytest.raises(UpstreamProtocolError):
            await fetch(pool)


async def test_invalid_headers_are_refused_without_echoing_them() -> None:
    async with upstream(answering(OK)) as (state, pool):
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [(b"x-api-key", b"sk-secret\r\nx-evil: 1")])
        assert "sk-secret" not in str(caught.value) and caught.value.__cause__ is None
        assert await fetch(pool) == (200, b"hello")  # the pool is still usable
    assert len(state.requests) == 1


async def test_a_cancelled_request_closes_its_connection() -> None:
    def silent(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            await reader.read()  # until the client hangs up

        return handler

    async with upstream(silent) as (state, pool):
        task = asyncio.ensure_future(fetch(pool))
        while not state.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open_connections == 0


async def test_an_unread_answer_is_not_reused() -> None:
    async with upstream(answering(OK)) as (state, pool):
        response = await pool.request(b"GET", b"/", [])
        await response.aclose()  # the body was never read: the connection cannot be reused
        assert await fetch(pool) == (200, b"hello")
    assert state.connections == 2


async def test_a_closed_pool_refuses_requests() -> None:
    async with upstream(answering(OK)) as (_, pool):
        await fetch(pool)
        await pool.aclose()
        assert pool.open_connections == 0
        with pytest.raises(UpstreamUnavailable):
            await fetch(pool)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    subprocess.run(
        [*command.split(), "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_server(certificate: tuple[str, str]) -> AsyncIterator[Server]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    state = Server()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                await read_request(reader, state)
                writer.write(OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


async def test_https_upstreams_are_verified(certificate: tuple[str, str]) -> None:
    import ssl

    from pydantic import SecretStr

    from x402gate.gateway.config import UpstreamSpec
    from x402gate.gateway.forward import Upstream

    async with tls_server(certificate) as state:
        trusting = ssl.create_default_context(cafile=certificate[0])
        pool = ConnectionPool(
            "127.0.0.1", state.port, host_header=b"127.0.0.1", ssl_context=trusting, timeout=5
        )
        assert await fetch(pool) == (200, b"hello")
        assert await fetch(pool) == (200, b"hello")
        await pool.aclose()
        assert state.connections == 1
        # The gateway's own context trusts certifi's authorities, not this certificate.
        spec = UpstreamSpec(
            url=f"https://127.0.0.1:{state.port}", headers={"x-api-key": SecretStr("sk-secret")}
        )
        upstream = Upstream("api", spec)
        with pytest.raises(UpstreamUnavailable):
            await fetch(upstream.pool())
        await upstream.aclose()
