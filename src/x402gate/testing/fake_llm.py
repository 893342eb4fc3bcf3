"""A fake LLM provider on loopback: OpenAI Chat Completions and Anthropic Messages, for tests.

It speaks both wire formats closely enough for the official ``openai`` and ``anthropic`` SDKs
(JSON answers and server-sent event streams, usage included), answers deterministically (the
same request always gets the same bytes), and records every request it receives — headers
included, so a test can check what a gateway forwarded and injected::

    with serve_fake_llm() as llm:
        ...  # point a client or a gateway at llm.url
        assert llm.requests[-1].header("x-api-key") == "sk-test"

A request header ``x-fake-llm`` tells it to misbehave:

* ``status-500`` (any code): answer that status with the provider's error body;
* ``hang``: never answer (until the client goes away, which is recorded);
* ``hold``: stream the first events, then wait for :meth:`FakeLLM.release` before the rest;
* ``break``: stream the first events, then drop the connection;
* ``set-cookie``: (echo paths) set a cookie, which a proxy must not replay for others.

:func:`refusing_url` gives a loopback URL where connections are refused. Routes: ``POST
/v1/messages`` (Anthropic), ``POST /v1/chat/completions`` (OpenAI), OpenAI's images, audio and
embeddings endpoints (:mod:`x402gate.testing.fake_media`), and any other path echoes
the method, path, query and body as JSON (never the headers: an echo of injected credentials
would defeat the tests that check they stay upstream).

Usage counts are deterministic: input tokens are the words of every message (and the system
prompt) plus one per message, output tokens the words of the reply, at most ``max_tokens``.
Needs Starlette and uvicorn (the ``server`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTROL_HEADER",
    "FakeLLM",
    "RecordedRequest",
    "anthropic_events",
    "anthropic_message",
    "create_app",
    "openai_completion",
    "openai_events",
    "refusing_url",
    "serve_asgi",
    "serve_fake_llm",
    "unresponsive_url",
]

CREATED = 1_700_000_000
"""The ``created`` timestamp of every OpenAI answer (fixed, so answers are reproducible)."""

CONTROL_HEADER = "x-fake-llm"
_HOLD_AFTER = 3  # events sent before a "hold" or "break" stream pauses or drops


@dataclass
class RecordedRequest:
    """One request as the fake provider received it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    disconnected: threading.Event = field(default_factory=threading.Event)
    """Set when the client went away before the answer was complete."""

    def header(self, name: str) -> str | None:
        """The value of a header (case-insensitive), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeLLM:
    """The fake provider's state: the requests it received, and the gate of ``hold`` streams."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.url = ""
        """Base URL once served (``http://127.0.0.1:<port>``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self.failure: str | None = None
        """A misbehaviour for every request (a value of :data:`CONTROL_HEADER`, such as
        ``"status-503"`` or ``"hang"``) that names none: one of several providers failing."""

    def release(self) -> None:
        """Let ``hold`` streams go on (thread-safe: tests call it from their own loop)."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def _held(self) -> asyncio.Event:
        if self._release is None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
        return self._release

    def clear(self) -> None:
        """Forget the recorded requests and close the gate of ``hold`` streams again."""
        self.requests.clear()
        self.failure = None
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.clear)


# --- deterministic answers -----------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _conversation(body: dict[str, Any]) -> tuple[list[str], str]:
    """Every text of the request (for the input count) and the last user text."""
    texts: list[str] = []
    system = body.get("system")
    if system is not None:
        texts.append(_text_of(system))
    last = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            texts.append(text)
            if message.get("role") == "user":
                last = text
    return texts, last


def _reply_words(body: dict[str, Any]) -> tuple[list[str], int, str]:
    """The reply's words (each a token), the input token count, and the stop reason."""
    texts, last = _conversation(body)
    input_tokens = sum(len(t.split()) for t in texts) + len(body.get("messages") or [])
    words = ["Hello", "from", str(body.get("model", "the model")) + "!", "You", "said:"]
    words += last.split() or ["nothing."]
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        return words[:limit], input_tokens, "max_tokens"
    return words, input_tokens, "end_turn"


def _pieces(words: list[str]) -> list[str]:
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _id(prefix: str, body: bytes) -> str:
    return prefix + hashlib.sha256(body).hexdigest()[:24]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {text}\n\n".encode()


def anthropic_message(body: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The JSON answer of ``POST /v1/messages``."""
    words, input_tokens, stop = _reply_words(body)
    return {
        "id": _id("msg_", raw),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "".join(_pieces(words))}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
    }


def anthropic_events(body: dict[str, Any], raw: bytes) -> list[bytes]:
    """The server-sent events of a streamed ``POST /v1/messages``."""
    words, input_tokens, stop = _reply_words(body)
    start = {
        "type": "message_start",
        "message": {
            "id": _id("msg_", raw),
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }
    events = [
        _sse(start, "message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    for piece in _pieces(words):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        events.append(_sse(delta, "content_block_delta"))
    events += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def _openai_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def openai_completion(body: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The JSON answer of ``POST /v1/chat/completions``."""
    words, input_tokens, stop = _reply_words(body)
    return {
        "id": _id("chatcmpl-", raw),
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(_pieces(words)),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "length" if stop == "max_tokens" else "stop",
            }
        ],
        "usage": _openai_usage(input_tokens, len(words)),
    }


def openai_events(body: dict[str, Any], raw: bytes) -> list[bytes]:
    """The server-sent events of a streamed ``POST /v1/chat/completions`` (with the usage chunk
    only when the request asks for ``stream_options.include_usage``, as OpenAI does)."""
    words, input_tokens, stop = _reply_words(body)
    base = {
        "id": _id("chatcmpl-", raw),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": body.get("model"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _pieces(words)]
    events.append(chunk({}, "length" if stop == "max_tokens" else "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(
            _sse({**base, "choices": [], "usage": _openai_usage(input_tokens, len(words))})
        )
    events.append(_sse("[DONE]"))
    return events


def _error_body(path: str, status: int) -> dict[str, Any]:
    if path.endswith("/messages"):
        return {"type": "error", "error": {"type": "api_error", "message": f"fake error {status}"}}
    return {
        "error": {
            "message": f"fake error {status}",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


# --- the app ---------------------------------------------------------------------------------


def create_app(llm: FakeLLM | None = None) -> Any:
    """The Starlette app of the fake provider, recording into ``llm`` (a new one by default,
    as ``app.state.llm``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .fake_media import media_routes

    state = llm if llm is not None else FakeLLM()

    async def record(request: Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=await request.body(),
        )
        state.requests.append(recorded)
        return recorded

    async def wait_for_disconnect(request: Request, recorded: RecordedRequest) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        recorded.disconnected.set()

    async def misbehave(request: Request, recorded: RecordedRequest) -> Response | None:
        control = request.headers.get(CONTROL_HEADER) or state.failure or ""
        if control.startswith("status-"):
            status = int(control.removeprefix("status-"))
            return JSONResponse(_error_body(request.url.path, status), status_code=status)
        if control == "hang":
            await wait_for_disconnect(request, recorded)
            return Response(status_code=499)  # never reaches anybody
        return None

    def stream(request: Request, recorded: RecordedRequest, events: list[bytes]) -> Response:
        control = request.headers.get(CONTROL_HEADER) or state.failure or ""

        async def body() -> AsyncIterator[bytes]:
            try:
                for index, event in enumerate(events):
                    if index == _HOLD_AFTER and control == "hold":
                        await state._held().wait()
                    if index == _HOLD_AFTER and control == "break":
                        raise ConnectionAbortedError("fake-llm drops the stream, as told")
                    yield event
                    await asyncio.sleep(0)  # one event per write, as a real stream arrives
            except asyncio.CancelledError:
                recorded.disconnected.set()
                raise

        headers = {"cache-control": "no-cache", "x-request-id": _id("req_", recorded.body)}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    async def llm_endpoint(request: Request) -> Response:
        recorded = await record(request)
        failure = await misbehave(request, recorded)
        if failure is not None:
            return failure
        try:
            body = json.loads(recorded.body)
        except ValueError:
            return JSONResponse(_error_body(request.url.path, 400), status_code=400)
        if not isinstance(body, dict):
            return JSONResponse(_error_body(request.url.path, 400), status_code=400)
        anthropic = request.url.path.endswith("/messages")
        if body.get("stream"):
            events = (anthropic_events if anthropic else openai_events)(body, recorded.body)
            return stream(request, recorded, events)
        answer = (anthropic_message if anthropic else openai_completion)(body, recorded.body)
        return JSONResponse(answer, headers={"x-request-id": _id("req_", recorded.body)})

    async def echo(request: Request) -> Response:
        recorded = await record(request)
        failure = await misbehave(request, recorded)
        if failure is not None:
            return failure
        answer = JSONResponse(
            {
                "method": recorded.method,
                "path": recorded.path,
                "query": recorded.query,
                "body": recorded.body.decode("utf-8", "replace"),
            }
        )
        if request.headers.get(CONTROL_HEADER) == "set-cookie":
            answer.set_cookie("session", "for-this-client-only")
        return answer

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/v1/messages", llm_endpoint, methods=["POST"]),
            Route("/v1/chat/completions", llm_endpoint, methods=["POST"]),
            *media_routes(record, misbehave, _error_body),
            Route("/{path:path}", echo, methods=methods),
        ]
    )
    app.state.llm = state
    return app


@contextlib.contextmanager
def serve_asgi(app: Any, host: str = "127.0.0.1", **options: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port of ``host``; yields its URL.

    The socket is bound and listening before the server starts, so clients can connect at
    once (they wait in the backlog): no readiness polling. ``options`` go to ``uvicorn.Config``.
    """
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say TCP, and
    # with it on, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "off",
        "timeout_graceful_shutdown": 1,
        **options,
    }
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def serve_fake_llm(host: str = "127.0.0.1") -> Iterator[FakeLLM]:
    """Serve a fresh fake provider on loopback; yields it with ``url`` set."""
    llm = FakeLLM()
    with serve_asgi(create_app(llm), host) as url:
        llm.url = url
        yield llm


@contextlib.contextmanager
def refusing_url(host: str = "127.0.0.1") -> Iterator[str]:
    """A URL on ``host`` where every connection is refused, for as long as the block runs.

    The port is bound but never listened on: nothing else can take it meanwhile, and the
    kernel answers each connection attempt with a reset.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.contextmanager
def unresponsive_url(host: str = "127.0.0.1") -> Iterator[str]:
    """A URL on ``host`` where connecting times out, for as long as the block runs.

    The port listens with a backlog of one that a few connections fill and nothing accepts:
    the kernel then drops every new connection attempt, as a host that went dark does.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, port))
        yield f"http://{host}:{port}"
    finally:
        for filler in fillers:
            filler.close()
        sock.close()
