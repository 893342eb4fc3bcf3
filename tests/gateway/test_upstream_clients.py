"""Every upstream client behaves the same against real loopback servers: streaming, SSE, chunked
and large bodies, timeouts, failures, no redirects or cookies, HEAD, keep-alive, request bodies,
and the gateway's forwarder over each of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from x402gate.errors import ConfigurationError
from x402gate.gateway.clients import (
    CLIENTS,
    DEFAULT_CLIENT,
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    client_class,
    open_client,
)

from .test_client import certificate, tls_server  # noqa: F401  (a fixture and a TLS server)

NAMES = sorted(CLIENTS)
SECRET = "sk-secret-0123456789"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """What a loopback server saw: its connections and each request's head and body."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    def head(self, index: int = -1) -> dict[bytes, bytes]:
        lines = self.requests[index][0].split(b"\r\n")[1:]
        pairs = (line.split(b":", 1) for line in lines if line)
        return {k.strip().lower(): v.strip() for k, v in pairs}


@contextlib.asynccontextmanager
async def serve(make: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    state = Server()
    handler = make(state)
    tasks: set[asyncio.Task[Any]] = set()

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

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, limit=1 << 20)
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
    """One request (head, then a Content-Length body); returns its method."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    state.requests.append((head, body))
    return head.split(b" ", 1)[0]


def answering(*responses: bytes, close: bool = False) -> Callable[[Server], Handler]:
    """Answer each request of a connection with the next response, cyclically."""

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


def ok(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: %d" % len(body)]
    return b"\r\n".join([*head, *extra, b"", body])


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    if request.param == "aiohttp":
        pytest.importorskip("aiohttp")
    return str(request.param)


@contextlib.asynccontextmanager
async def client(
    name: str, port: int, *, timeout: float = 5.0, max_connections: int = 10
) -> AsyncIterator[UpstreamClient]:
    options = UpstreamOptions(
        "127.0.0.1",
        port,
        host_header=b"127.0.0.1:%d" % port,
        timeout=timeout,
        max_connections=max_connections,
    )
    upstream = open_client(name, options)
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def read_all(response: UpstreamResponse) -> bytes:
    try:
        return b"".join([part async for part in response.aiter_raw()])
    finally:
        await response.aclose()


async def fetch(
    upstream: UpstreamClient,
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = await upstream.request(method, target, headers or [], body)
    return response.status_code, response.headers, await read_all(response)


def test_unknown_client_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown upstream client 'curl'"):
        open_client("curl", UpstreamOptions("127.0.0.1", 1, host_header=None))


def test_a_client_whose_library_is_missing_fails_when_the_gateway_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(CLIENTS, "gone", "x402gate_no_such_module:Client")
    with pytest.raises(ConfigurationError, match="pip install"):
        client_class("gone")


def test_the_default_is_a_maintained_library() -> None:
    from x402gate.gateway.config import GatewaySection

    assert DEFAULT_CLIENT == GatewaySection().upstream_client == "aiohttp"


async def test_the_request_goes_out_as_given_with_its_body(name: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    async with serve(answering(ok(b"done"))) as server, client(name, server.port) as upstream:
        headers = [(b"X-Custom", b"One"), (b"x-custom", b"two"), (b"content-type", b"app/x")]
        status, _, answer = await fetch(upstream, b"POST", b"/a%20b/c?q=%2F&r", headers, body)
    assert (status, answer) == (200, b"done")
    head, received = server.requests[0]
    assert head.startswith(b"POST /a%20b/c?q=%2F&r HTTP/1.1\r\n")  # the target is not re-quoted
    assert received == body
    seen = server.head()
    assert seen[b"host"] == b"127.0.0.1:%d" % server.port
    assert seen[b"content-length"] == b"%d" % len(body)
    assert seen[b"content-type"] == b"app/x"
    # Repeated headers all go out, in their order (names in any case: HTTP ignores it).
    lines = head.lower().split(b"\r\n")
    assert [line for line in lines if line.startswith(b"x-custom:")] == [
        b"x-custom: one",
        b"x-custom: two",
    ]
    # Nothing of the library's own: the upstream sees the client's request as forwarded.
    for added in (b"user-agent", b"accept", b"accept-encoding", b"cookie", b"te", b"keep-alive"):
        assert added not in seen, added


async def test_a_host_header_of_the_caller_is_used_when_the_options_have_none(name: str) -> None:
    async with serve(answering(ok(b"x"))) as server:
        options = UpstreamOptions("127.0.0.1", server.port, host_header=None)
        upstream = open_client(name, options)
        try:
            await fetch(upstream, headers=[(b"host", b"virtual.example")])
        finally:
            await upstream.aclose()
    assert server.head()[b"host"] == b"virtual.example"


async def test_connections_are_kept_alive_and_reused(name: str) -> None:
    async with serve(answering(ok(b"a"), ok(b"bb"))) as server, client(name, server.port) as up:
        answers = [(await fetch(up))[2] for _ in range(4)]
    assert answers == [b"a", b"bb", b"a", b"bb"]
    assert server.connections == 1


async def test_concurrent_requests_open_connections_up_to_the_limit(name: str) -> None:
    def slow(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader, state)
                await asyncio.sleep(0.05)
                writer.write(ok(b"x"))
                await writer.drain()

        return handler

    async with serve(slow) as server, client(name, server.port, max_connections=2) as upstream:
        answers = await asyncio.gather(*(fetch(upstream) for _ in range(6)))
    assert [body for _, _, body in answers] == [b"x"] * 6
    assert server.connections == 2


async def test_a_head_answer_has_no_body_and_keeps_the_connection(name: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"

    def make(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                method = await read_request(reader, state)
                writer.write(head if method == b"HEAD" else ok(b"after"))
                await writer.drain()

        return handler

    async with serve(make) as server, client(name, server.port) as upstream:
        status, headers, body = await fetch(upstream, b"HEAD")
        assert (status, body) == (200, b"")
        assert (b"content-length", b"1000") in [(k.lower(), v) for k, v in headers]
        assert (await fetch(upstream))[2] == b"after"
    assert server.connections == 1


async def test_redirects_are_not_followed_and_cookies_not_kept(name: str) -> None:
    redirect = (
        b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\nset-cookie: sid=abc; Path=/\r\n"
        b"content-length: 0\r\n\r\n"
    )
    async with serve(answering(redirect)) as server, client(name, server.port) as upstream:
        status, headers, _ = await fetch(upstream)
        assert status == 302
        assert (b"location", b"/elsewhere") in [(k.lower(), v) for k, v in headers]
        await fetch(upstream)
    assert [head.split(b" ")[1] for head, _ in server.requests] == [b"/", b"/"]
    assert b"cookie" not in server.head()


async def test_hop_by_hop_headers_come_back_as_received(name: str) -> None:
    # Stripping them is the forwarder's job (it needs to see them to do it).
    answer = ok(b"x", b"connection: keep-alive, x-private", b"x-private: 1", b"keep-alive: t=5")
    async with serve(answering(answer)) as server, client(name, server.port) as upstream:
        _, headers, _ = await fetch(upstream)
    names = [k.lower() for k, _ in headers]
    assert {b"connection", b"x-private", b"keep-alive"} <= set(names)


async def test_chunked_answers_stream_as_they_come(name: str) -> None:
    go_on = asyncio.Event()

    def make(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + chunk(b"data: one\n\n")
            )
            await writer.drain()
            await go_on.wait()  # the second event only once the first one got through
            writer.write(chunk(b"data: two\n\n") + b"0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handler

    async with serve(make) as server, client(name, server.port) as upstream:
        response = await upstream.request(b"GET", b"/events", [])
        received = b""
        try:
            async for part in response.aiter_raw():
                received += part
                if received == b"data: one\n\n":
                    go_on.set()
        finally:
            await response.aclose()
    assert received == b"data: one\n\ndata: two\n\n"


async def test_an_answer_delimited_by_the_connection_closing_is_read_whole(name: str) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: a\n\ndata: b\n\n"
    async with serve(answering(answer, close=True)) as server, client(name, server.port) as up:
        assert (await fetch(up))[2] == b"data: a\n\ndata: b\n\n"
        assert (await fetch(up))[2] == b"data: a\n\ndata: b\n\n"  # on a new connection
    assert server.connections == 2


async def test_large_answers_arrive_whole(name: str) -> None:
    large = bytes(range(256)) * (32 * 1024)  # 8 MiB
    chunked = b"".join(chunk(large[i : i + 65536]) for i in range(0, len(large), 65536))
    answers = (
        ok(large),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n",
    )
    async with serve(answering(*answers)) as server, client(name, server.port) as upstream:
        assert (await fetch(upstream))[2] == large
        assert (await fetch(upstream))[2] == large
    assert server.connections == 1


async def test_a_refused_connection_is_unavailable(name: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        async with client(name, port) as upstream:
            with pytest.raises(UpstreamUnavailable) as caught:
                await upstream.request(b"GET", b"/", [(b"x-api-key", SECRET.encode())])
    assert SECRET not in str(caught.value) and str(port) not in str(caught.value)


async def test_an_upstream_that_does_not_answer_times_out(name: str) -> None:
    def silent(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            await reader.read()

        return handler

    async with serve(silent) as server, client(name, server.port, timeout=0.3) as upstream:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await upstream.request(b"GET", b"/", [])
        assert loop.time() - started < 3


async def test_a_body_that_stalls_times_out(name: str) -> None:
    def stall(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await writer.drain()
            await reader.read()

        return handler

    async with serve(stall) as server, client(name, server.port, timeout=0.3) as upstream:
        response = await upstream.request(b"GET", b"/", [])
        with pytest.raises(UpstreamTimeout):
            await read_all(response)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"),
    ],
    ids=["content-length", "chunked"],
)
async def test_an_upstream_that_dies_mid_answer_is_an_error(name: str, answer: bytes) -> None:
    async with serve(answering(answer, close=True)) as server, client(name, server.port) as up:
        response = await up.request(b"GET", b"/", [])
        assert response.status_code == 200
        received = b""
        with pytest.raises(UpstreamError):
            try:
                async for part in response.aiter_raw():
                    received += part
            finally:
                await response.aclose()
    # What the upstream sent before it died is relayed (and metered), then the error.
    assert received == answer.split(b"\r\n\r\n", 1)[1].removeprefix(b"9\r\n").removesuffix(b"\r\n")


async def test_a_connection_closed_before_an_answer_is_an_error(name: str) -> None:
    def hang_up(state: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader, state)

        return handler

    async with serve(hang_up) as server, client(name, server.port) as upstream:
        with pytest.raises(UpstreamError):
            await upstream.request(b"GET", b"/", [])


async def test_garbage_is_an_error(name: str) -> None:
    garbage = answering(b"SMTP ready\r\n\r\n", close=True)
    async with serve(garbage) as server, client(name, server.port) as upstream:
        with pytest.raises(UpstreamError):
            await fetch(upstream)


async def test_header_injection_is_refused_without_echoing_the_value(name: str) -> None:
    async with serve(answering(ok(b"x"))) as server, client(name, server.port) as upstream:
        bad = (SECRET + "\r\nx-smuggled: 1").encode()
        with pytest.raises(UpstreamError) as caught:
            await fetch(upstream, headers=[(b"x-api-key", bad)])
    assert SECRET not in str(caught.value)
    assert all(b"x-smuggled" not in head for head, _ in server.requests)


async def test_an_unread_answer_closes_its_connection(name: str) -> None:
    async with serve(answering(ok(b"x" * 4_000_000))) as server, client(name, server.port) as up:
        response = await up.request(b"GET", b"/", [])
        await response.aclose()  # the body was never read: the connection cannot be reused
        assert (await fetch(up))[2] == b"x" * 4_000_000
    assert server.connections == 2


# The forwarder over each client: the seam the gateway uses.

GATEWAY = """\
gateway: {{upstream_client: {name}}}
pay_to: "0x1111111111111111111111111111111111111111"
accepts: [base]
facilitator: http://127.0.0.1:9/unreachable
store: memory://
upstreams:
  api:
    url: http://127.0.0.1:{port}/base/
    headers: {{x-api-key: "{secret}"}}
routes:
  "POST /v1/*":
    upstream: api
    price: $0.01
"""


async def test_the_forwarder_relays_through_the_configured_client(name: str) -> None:
    pytest.importorskip("yaml")
    from x402gate.gateway.app import Gateway
    from x402gate.gateway.config import parse_config

    answer = ok(b"hello", b"connection: x-private", b"x-private: 1", b"x-kept: yes")
    async with serve(answering(answer)) as server:
        gateway = Gateway(parse_config(GATEWAY.format(name=name, port=server.port, secret=SECRET)))
        upstream = gateway.upstreams["api"]
        assert upstream.client_name == name
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat",
            "raw_path": b"/v1/chat",
            "query_string": b"",
            "headers": [(b"te", b"trailers"), (b"x-payment", b"paid"), (b"x-in", b"1")],
            "x402gate.payment": object(),
        }
        requests = iter([{"type": "http.request", "body": b"{}", "more_body": False}])
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            with contextlib.suppress(StopIteration):
                return next(requests)
            await asyncio.Event().wait()  # no disconnect
            raise AssertionError  # pragma: no cover

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        try:
            await gateway.forwarder(scope, receive, send)
        finally:
            await upstream.aclose()
    start = sent[0]
    assert start["status"] == 200
    names = {k for k, _ in start["headers"]}
    assert b"x-kept" in names and b"x-private" not in names and b"connection" not in names
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello"
    head, body = server.requests[0]
    assert head.startswith(b"POST /base/v1/chat HTTP/1.1")
    assert body == b"{}"
    seen = server.head()
    assert seen[b"x-api-key"] == SECRET.encode() and seen[b"x-in"] == b"1"
    assert b"te" not in seen and b"x-payment" not in seen


async def test_https_upstreams_are_verified(
    name: str,
    certificate: tuple[str, str],  # noqa: F811  (the fixture imported above)
) -> None:
    import ssl

    async with tls_server(certificate) as state:
        trusting = ssl.create_default_context(cafile=certificate[0])
        trusting.set_alpn_protocols(["http/1.1"])  # as the gateway's own context
        options = UpstreamOptions(
            "127.0.0.1", state.port, host_header=b"127.0.0.1", ssl_context=trusting, timeout=5
        )
        upstream = open_client(name, options)
        try:
            assert (await fetch(upstream))[::2] == (200, b"hello")
            assert (await fetch(upstream))[::2] == (200, b"hello")
        finally:
            await upstream.aclose()
        assert state.connections == 1
        # A context that does not trust the certificate (certifi's authorities) refuses it.
        strict = ssl.create_default_context()
        options = UpstreamOptions(
            "127.0.0.1", state.port, host_header=b"127.0.0.1", ssl_context=strict, timeout=5
        )
        upstream = open_client(name, options)
        try:
            with pytest.raises(UpstreamUnavailable):
                await fetch(upstream)
        finally:
            await upstream.aclose()
