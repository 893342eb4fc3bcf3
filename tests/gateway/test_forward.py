"""The forwarding pieces without a chain: path rewrites, header rules, redaction, path guards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

pytest.importorskip("yaml")

from x402gate._web.types import Message
from x402gate.gateway import Gateway, parse_config
from x402gate.gateway.forward import Upstream, capture_pattern
from x402gate.gateway.redaction import RedactingFilter, Redactor

FILE = """\
pay_to: "0x1111111111111111111111111111111111111111"
accepts: [base]
facilitator: http://127.0.0.1:9/unreachable
store: memory://
upstreams:
  api:
    url: http://127.0.0.1:9/base/
    headers: {x-api-key: "${KEY}"}
routes:
  "GET /data/{query_id}/rows/:row":
    upstream: api
    path: /v1/query/{query_id}/results/{row}
    price: $0.01
  "GET /files/*":
    upstream: api
    path: /storage/{*}
    price: $0.01
  "POST /v1/*":
    upstream: api
    price: $0.01
"""


def gateway() -> Gateway:
    return Gateway(parse_config(FILE, env={"KEY": "sk-key-0123456789"}))


@pytest.mark.parametrize(
    ("index", "path", "raw_path", "expected"),
    [
        (0, "/data/42/rows/7", b"/data/42/rows/7", b"/v1/query/42/results/7"),
        (0, "/data/a b/rows/é", b"/data/a%20b/rows/%C3%A9", b"/v1/query/a%20b/results/%C3%A9"),
        (1, "/files/a/b c.txt", b"/files/a/b%20c.txt", b"/storage/a/b%20c.txt"),
        (1, "/files", b"/files", b"/storage/"),
        (2, "/v1/x y", b"/v1/x%20y", b"/v1/x%20y"),  # no rewrite: the client's encoding as sent
    ],
)
def test_paths_are_rewritten_and_encoded(
    index: int, path: str, raw_path: bytes, expected: bytes
) -> None:
    gw = gateway()
    chosen = list(gw.forwarder.targets.values())[index]
    scope = {"path": path, "raw_path": raw_path}
    assert chosen.raw_path(scope) == expected
    assert chosen.upstream.target(expected, b"a=1&b=%2F") == b"/base" + expected + b"?a=1&b=%2F"
    assert chosen.upstream.target(expected, b"") == b"/base" + expected
    url = chosen.upstream.url(expected, b"a=1&b=%2F")
    assert url == f"http://127.0.0.1:9/base{expected.decode()}?a=1&b=%2F"


def test_targets_hold_only_what_a_request_line_may() -> None:
    upstream = list(gateway().forwarder.targets.values())[2].upstream
    assert upstream.target(b"/v1/a b#c\xc3\xa9", b"q=\x7f") == b"/base/v1/a%20b%23c%C3%A9?q=%7F"
    assert upstream.target(b"/v1/%20ok", b"a=1&b=~") == b"/base/v1/%20ok?a=1&b=~"


def test_capture_pattern_reads_parameters_and_rest() -> None:
    params = capture_pattern("GET /a/{x}/:y").match("/a/1/2")
    assert params is not None and params.groupdict() == {"x": "1", "y": "2"}
    rest = capture_pattern("/a/*").match("/a/b/c")
    assert rest is not None and rest.group("x402gate_rest") == "b/c"


def test_upstream_repr_hides_its_url_and_headers() -> None:
    from pydantic import SecretStr

    from x402gate.gateway.config import UpstreamSpec

    spec = UpstreamSpec(url="https://u:pw@x.example", headers={"k": SecretStr("sk-123456")})
    assert repr(Upstream("api", spec)) == "Upstream('api')"


async def asgi(app: Any, path: str, method: str = "GET") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gw.test")],
        "scheme": "http",
        "server": ("gw.test", 80),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_dot_segments_are_refused_before_any_payment() -> None:
    gw = gateway()
    for path in ("/v1/../admin", "/files/./x", "/v1/a/.."):
        status, body = await asgi(gw, path, "POST" if path.startswith("/v1") else "GET")
        assert status == 400 and b"invalid_path" in body


async def test_requests_no_route_matches_get_a_404() -> None:
    status, body = await asgi(gateway(), "/elsewhere")
    assert status == 404 and b"not_found" in body


def test_redacting_filter_masks_messages_arguments_and_tracebacks() -> None:
    secret = "sk-live-abcdef123456"
    redacting = RedactingFilter(Redactor([secret, "ab", secret + "-longer"]))
    try:
        raise ValueError(f"upstream said {secret}")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "key %s and %s-longer",
            (secret, secret),
            sys.exc_info(),
        )
    assert redacting.filter(record)
    text = logging.Formatter().format(record)
    assert secret not in text
    assert "key *** and ***" in text and "upstream said ***" in text
    assert "ab" in Redactor(["ab"])("ab")  # too short to be a secret: left alone


async def test_cookies_an_upstream_sets_are_never_sent_for_other_clients(llm: Any) -> None:
    config = parse_config(
        FILE.replace("http://127.0.0.1:9/base/", llm.url), env={"KEY": "sk-key-0123456789"}
    )
    gw = Gateway(config)
    forwarder = gw.forwarder
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/echo",
        "raw_path": b"/v1/echo",
        "query_string": b"",
        "headers": [(b"host", b"gw.test"), (b"x-fake-llm", b"set-cookie")],
        "x402gate.payment": object(),  # what the payment middleware leaves for paid requests
    }
    answers = []
    for _ in range(2):
        sent: list[Message] = []
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # as a server does until the client goes away
            raise AssertionError("unreachable")

        async def send(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        await forwarder(scope, receive, send)
        answers.append(sent[0])
    await gw.aclose()
    assert all(a["status"] == 200 for a in answers)
    assert any(k == b"set-cookie" for k, _ in answers[0]["headers"])  # passed to its client
    assert [r.header("cookie") for r in llm.requests] == [None, None]  # and kept by nobody
    assert llm.requests[0].header("x-api-key") == "sk-key-0123456789"


async def test_a_disconnect_during_settlement_waits_for_it_to_finish() -> None:
    from x402gate.gateway.forward import _Watch

    left = asyncio.Event()
    settled: list[str] = []

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def request() -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive)
        watch.hold()  # the middleware settles while the response start is being sent
        left.set()
        for _ in range(5):
            await asyncio.sleep(0)  # the watcher sees the disconnect meanwhile
        settled.append("settled")
        watch.release()
        await asyncio.sleep(0)  # the first await after the release is cancelled
        settled.append("streamed on")  # pragma: no cover

    task = asyncio.ensure_future(request())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert settled == ["settled"]


def test_the_server_stack_prefers_httptools_and_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from x402gate.gateway import app

    installed = app._installed
    assert installed("asyncio") and not installed("x402gate_no_such_module")
    monkeypatch.setattr(app, "_installed", lambda module: True)
    assert app.server_stack() == {"http": "httptools", "loop": "uvloop"}
    monkeypatch.setattr(app, "_installed", lambda module: False)
    assert app.server_stack() == {"http": "h11", "loop": "asyncio"}
    config = app.uvicorn_config(gateway(), port=0)
    assert (config.http, config.loop) == ("h11", "asyncio")
