"""Coverage-guided fuzzing of what upstreams send back, with atheris (libFuzzer).

Two families of parsers read bytes an upstream (an LLM provider, any proxied API) chooses:

* the usage meters (:class:`~x402gate.metering.SSEUsageMeter`,
  :class:`~x402gate.metering.JSONUsageMeter`, :func:`~x402gate.metering.usage_from_json`,
  :func:`~x402gate.metering.meter_for`), which decide what a metered call is charged;
* the gateway's upstream client and relay (``x402gate proxy``), which read the upstream's
  status line, headers and framing and pass the answer on. The client is the gateway's default
  (aiohttp, whose parser is compiled code, so only the relay is instrumented);
  ``X402GATE_FUZZ_UPSTREAM_CLIENT=builtin`` fuzzes the own h11 client, instrumented too.

The first byte of an input picks the target:

0. an SSE body fed to :class:`SSEUsageMeter` in fuzzed chunks (the next byte sets a small
   ``max_event_bytes`` or the default);
1. a JSON body fed to :class:`JSONUsageMeter` in fuzzed chunks (small ``max_body_bytes`` and
   ``tail_bytes`` too, so the tail search runs);
2. a raw HTTP/1.1 answer a loopback upstream sends to a real :class:`~x402gate.gateway.Gateway`
   (called in-process, its upstream over real TCP) for a per-token route paid from credit;
3. the client's side of the same exchange: a fuzzed path (under a route that rewrites it, or
   not), query string, headers and body, the upstream answering a valid JSON answer.

The oracles:

* no exception from any parser, ``feed`` or ``close``;
* a usage is ``None`` or non-negative integer counts, and the same whatever the chunking
  (the body is also fed whole and byte by byte: the meters promise any split point is fine);
* a JSON body under the size cap gives what :func:`usage_from_json` gives for the whole body;
* the charge of a :class:`~x402gate.metering.PerToken` route for that usage is an integer from
  0 to the request's quote;
* through the gateway: no exception, one answer, status below 500 unless it is the upstream's
  own status or the gateway's 502/504 for a broken upstream (never a 500 of its own); nothing
  logged at ERROR; the payer's credit moves by exactly the integer charge, at most the quote;
* what reaches the upstream: only paths under its prefix and the routes' paths, without ``.``
  or ``..`` segments, never a payment, sign-in or session header, and ``accept-encoding:
  identity`` alone (usage is read from the answer as it passes).

Run it like the other harnesses (``X402GATE_FUZZ_SECONDS``, or ``-max_total_time=``/``-runs=``)::

    .venv/bin/python tests/fuzz/fuzz_upstream.py
    X402GATE_FUZZ_SECONDS=3600 .venv/bin/python tests/fuzz/fuzz_upstream.py /tmp/up-corpus
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from typing import Any
from urllib.parse import unquote

import atheris

with atheris.instrument_imports(include=["x402gate", "h11"]):
    import h11  # noqa: F401  (instrumented: the gateway's HTTP/1.1 parser)
    import x402.schemas

    from x402gate._web.types import Message
    from x402gate.credit import SESSION_HEADER
    from x402gate.gateway import Gateway, parse_config
    from x402gate.metering import (
        JSONUsageMeter,
        PerToken,
        SSEUsageMeter,
        Usage,
        meter_for,
        usage_from_json,
    )
    from x402gate.request import RequestInfo
    from x402gate.stores.base import credit_account
    from x402gate.stores.memory import MemoryStore  # noqa: F401  (instrumented)

import known
from _harness import run

NOW = 1_900_000_000.0
NETWORK = "eip155:31337"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYER = "0x5975c152fe58cdcb7e25586a3c9b994a16dbb616"
SECRET = "fuzz-harness-gateway-secret-" + "g" * 20  # this harness only
HOST = "gateway.test"
ORIGIN = f"http://{HOST}"  # the gateway's public origin: its session tokens name it
FUNDS = 10**15

PRICING = PerToken(
    {
        "gpt-*": {"input": "$1", "output": "$2", "per": 1000},
        "claude-*": {"input": "$3", "output": "$15"},
    },
    max_output_tokens=4096,
)
CHAT_BODY = json.dumps(
    {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
).encode()
CHAT_REQUEST = RequestInfo("POST", "/v1/chat/completions", body=CHAT_BODY)
CHAT_QUOTE = PRICING.quote(CHAT_REQUEST)
MAX_QUOTE = 500_000  # the gateway routes' max_price, $0.50, in the token's 6-decimal units


class Reader:
    """One input, front to back: a byte per small choice, then slices (see fuzz_gate.Reader)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int_in(self, low: int, high: int) -> int:
        if self.pos >= len(self.data):
            return low
        self.pos += 1
        return low + self.data[self.pos - 1] % (high - low + 1)

    def take(self, count: int) -> bytes:
        self.pos += count
        return self.data[self.pos - count : self.pos]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def _chunks(reader: Reader, body: bytes) -> list[bytes]:
    cuts = sorted(reader.int_in(0, 255) * 4 for _ in range(reader.int_in(0, 6)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _metered(meter: Any, chunks: list[bytes]) -> Usage | None:
    for chunk in chunks:
        meter.feed(chunk)
    meter.close()
    usage: Usage | None = meter.usage
    return usage


def _check_usage(usage: Usage | None) -> None:
    if usage is None:
        return
    for count in (usage.input_tokens, usage.output_tokens):
        assert count is None or (type(count) is int and count >= 0), usage
    charge = PRICING.charge(usage, CHAT_REQUEST)
    assert type(charge) is int and 0 <= charge <= CHAT_QUOTE, (usage, charge, CHAT_QUOTE)


def check_meter(kind: int, reader: Reader) -> None:
    if kind == 0:
        small = reader.int_in(0, 64)

        def make() -> Any:
            return SSEUsageMeter(max_event_bytes=small * 8) if small else SSEUsageMeter()

    else:
        body_cap, tail = reader.int_in(0, 64), reader.int_in(1, 64)

        def make() -> Any:
            if body_cap:
                return JSONUsageMeter(max_body_bytes=body_cap * 16, tail_bytes=tail * 16)
            return JSONUsageMeter()

    chunks = _chunks(reader, reader.rest())
    body = b"".join(chunks)
    usage = _metered(make(), chunks)
    _check_usage(usage)
    assert _metered(make(), [body]) == usage, "the usage depends on the chunking"
    assert _metered(make(), [body[i : i + 1] for i in range(len(body))]) == usage, "byte by byte"
    if kind == 1 and not (body_cap and len(body) > body_cap * 16):
        assert usage == usage_from_json(body), (usage, usage_from_json(body))
    media = "text/event-stream" if kind == 0 else "application/json"
    assert type(meter_for(media)) is type(make())


# -- the gateway, over real loopback TCP ---------------------------------------------------------


class RefusingFacilitator:
    """Supports the network; refuses every payment (requests here are paid from credit)."""

    async def supported(self) -> x402.schemas.SupportedResponse:
        kind = x402.schemas.SupportedKind(x402_version=2, scheme="exact", network=NETWORK)
        return x402.schemas.SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> x402.schemas.VerifyResponse:
        return x402.schemas.VerifyResponse(is_valid=False, invalid_reason="insufficient_funds")

    async def settle(self, payload: Any, requirements: Any) -> x402.schemas.SettleResponse:
        return x402.schemas.SettleResponse(
            success=False, error_reason="insufficient_funds", transaction="", network=NETWORK
        )


class Upstream:
    """A loopback TCP server that answers each request with the bytes of the current input."""

    def __init__(self) -> None:
        self.answer = b""
        self.received: list[tuple[bytes, list[bytes]]] = []  # (request target, header lines)
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
            target = lines[0].split(b" ")[1] if lines[0].count(b" ") == 2 else lines[0]
            self.received.append((target, lines[1:]))
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()  # one answer per connection: the end of the bytes is the end


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


CLIENT = os.environ.get("X402GATE_FUZZ_UPSTREAM_CLIENT", "aiohttp")
LOOP = asyncio.new_event_loop()
UPSTREAM = Upstream()
PORT = LOOP.run_until_complete(UPSTREAM.start())
CONFIG = f"""\
gateway:
  upstream_client: {CLIENT}
  secret: "{SECRET}"
  public_origin: "{ORIGIN}"
pay_to: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
accepts:
  - network: "{NETWORK}"
    asset: "{TOKEN}"
    name: USD Coin
    version: "2"
facilitator:
  url: http://127.0.0.1:9/facilitator
upstreams:
  llm:
    url: http://127.0.0.1:{PORT}/base
    timeout: 2
routes:
  "POST /api/*":
    upstream: llm
    path: /v1/{{*}}
    type: per-token
    models:
      "gpt-*": {{input: $1, output: $2, per: 1000}}
    max_price: $0.50
  "POST /v1/chat/completions":
    upstream: llm
    type: per-token
    models:
      "gpt-*": {{input: $1, output: $2, per: 1000}}
    max_price: $0.50
"""
GATEWAY = Gateway(parse_config(CONFIG), facilitator=RefusingFacilitator(), store="memory://")
GATE = GATEWAY.gate
ACCOUNT = credit_account(NETWORK, TOKEN, PAYER)
GATE.store.credit_topup(ACCOUNT, FUNDS, "fuzz-funding", NOW)
ERRORS = _Errors()
logging.getLogger().addHandler(ERRORS)
CHARGES: list[int] = []


async def _on_event(event: Any) -> None:
    if event.kind == "charged":
        CHARGES.append(event.amount)


GATE.on_event(_on_event)


class Request:
    """What the client sends to the gateway (by default: the chat route, paid from credit)."""

    def __init__(self) -> None:
        self.raw_path = b"/v1/chat/completions"
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        self.body = CHAT_BODY


async def call_gateway(request: Request) -> list[Message]:
    token = GATE.session_tokens.issue(PAYER, NETWORK, TOKEN, GATE.clock.now(), origin=ORIGIN)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        # As uvicorn gives it: the path percent-decoded from the raw path.
        "path": unquote(request.raw_path.decode("ascii")),
        "raw_path": request.raw_path,
        "query_string": request.query,
        "root_path": "",
        "headers": [
            (b"host", HOST.encode()),
            (SESSION_HEADER.lower().encode(), token.encode()),
            *request.headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": request.body, "more_body": False}]
    done = asyncio.Event()
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await asyncio.wait_for(GATEWAY(scope, receive, send), 10)
    done.set()
    if GATE._commits:  # charges are committed after the answer: wait for them
        await asyncio.gather(*list(GATE._commits))
    return sent


# Status lines as h11 reads them (any HTTP/x.y; a reason phrase or none), informational
# answers (1xx) before the final one included.
_STATUS = re.compile(rb"(?:^|\n)HTTP/\d\.\d (\d{3})(?:[ \r\n]|$)")


def exchange(request: Request, answer: bytes) -> tuple[int, bytes]:
    """One request through the gateway to an upstream answering ``answer``; the checks common
    to every gateway input. Returns the status and the body the client got."""
    UPSTREAM.answer = answer
    UPSTREAM.received.clear()
    before = GATE.store.credit_balance(ACCOUNT, NOW).available
    CHARGES.clear()
    ERRORS.records.clear()
    sent = LOOP.run_until_complete(call_gateway(request))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    status = starts[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if status >= 500:
        relayed = status in {int(code) for code in _STATUS.findall(answer)}
        broken = status in (502, 504) and b'"upstream_' in body
        assert relayed or broken, (status, body[:300])
    assert ERRORS.records == [], [r.getMessage() for r in ERRORS.records]
    after = GATE.store.credit_balance(ACCOUNT, NOW).available
    assert all(type(c) is int and 0 <= c <= MAX_QUOTE for c in CHARGES), CHARGES
    assert before - after == sum(CHARGES), (before, after, CHARGES)
    for target, lines in UPSTREAM.received:
        # Only the paths the routes sell, under the upstream's prefix, reach the upstream.
        path = target.split(b"?", 1)[0]
        assert path == b"/base/v1/chat/completions" or path.startswith(b"/base/v1/"), target
        segments = unquote(path.decode("latin-1")).split("/")
        assert "." not in segments and ".." not in segments, target
        # The client's payment credentials never reach the upstream; the body comes unencoded.
        names = [line.split(b":", 1)[0].strip().lower() for line in lines]
        assert not set(names) & PAYMENT_HEADERS, lines
        encodings = [line for line in lines if line.lower().startswith(b"accept-encoding:")]
        assert encodings == [b"accept-encoding: identity"], lines
    return status, body


def check_gateway(reader: Reader) -> None:
    exchange(Request(), reader.rest())


CLIENT_HEADERS = [
    b"connection",
    b"accept-encoding",
    b"content-type",
    b"content-length",
    b"transfer-encoding",
    b"te",
    b"upgrade",
    b"keep-alive",
    b"expect",
    b"host",
    b"payment-signature",
    b"x-payment",
    b"sign-in-with-x",
    b"x402gate-session",
    b"cookie",
    b"x-forwarded-for",
    b"accept",
]
VISIBLE = bytes(range(0x21, 0x7F)).translate(None, b"?#")
PAYMENT_HEADERS = {b"payment-signature", b"x-payment", b"sign-in-with-x", b"x402gate-session"}


def check_client(reader: Reader) -> None:
    request = Request()
    raw = reader.take(reader.int_in(0, 80))
    kept = bytes(b for b in raw if b in VISIBLE)
    if reader.int_in(0, 1):
        request.raw_path = b"/api/" + kept
    else:
        request.raw_path = b"/v1/chat/completions" + kept[:2]
    request.query = bytes(b for b in reader.take(reader.int_in(0, 40)) if b in VISIBLE + b"?")
    for _ in range(reader.int_in(0, 4)):
        name = CLIENT_HEADERS[reader.int_in(0, len(CLIENT_HEADERS) - 1)]
        value = reader.take(reader.int_in(0, 24)).translate(None, b"\r\n\0")
        request.headers.append((name, value))
    request.body = reader.rest()
    exchange(request, UPSTREAM_OK)


def check_one(data: bytes) -> None:
    """The properties, for one input; raises on a violation."""
    reader = Reader(data)
    kind = reader.int_in(0, 3)
    if kind == 3:
        check_client(reader)
    elif kind == 2:
        check_gateway(reader)
    else:
        check_meter(kind, reader)


def _http(status: bytes, headers: list[bytes], body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in body.split(b"\n\n") if part
        )
        headers = [*headers, b"transfer-encoding: chunked"]
        body = framed + b"0\r\n\r\n"
    else:
        headers = [*headers, b"content-length: %d" % len(body)]
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


UPSTREAM_OK = _http(
    b"200 OK",
    [b"content-type: application/json"],
    b'{"model": "gpt-4o", "usage": {"prompt_tokens": 9, "completion_tokens": 3}}',
)


def seeds() -> list[bytes]:
    """Real answer shapes: OpenAI and Anthropic, streamed and not, over both framings."""
    anthropic_sse = (
        b"\xef\xbb\xbfevent: message_start\r\n"
        b'data: {"type": "message_start", "message": {"model": "claude-haiku-4-5", "usage": '
        b'{"input_tokens": 25, "cache_read_input_tokens": 3, "output_tokens": 1}}}\r\n\r\n'
        b": ping\r\n\r\nevent: message_delta\r\n"
        b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}\r\n\r\n'
    )
    openai_sse = (
        b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        b'data: {"choices": [], "model": "gpt-4o", "usage": {"prompt_tokens": 9, '
        b'"completion_tokens": 3, "total_tokens": 12}}\n\n'
        b"data: [DONE]\n\n"
    )
    responses_sse = (
        b"event: response.completed\n"
        b'data: {"type": "response.completed", "response": {"model": "gpt-4o", "usage": '
        b'{"input_tokens": 7, "output_tokens": 5}}}\n\n'
    )
    openai_json = (
        b'{"id": "c1", "model": "gpt-4o", "choices": [{"message": {"content": "hi"}}], '
        b'"usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}'
    )
    anthropic_json = (
        b'{"id": "msg_1", "model": "claude-haiku-4-5", "content": [], "usage": '
        b'{"input_tokens": 10, "output_tokens": 2, "cache_creation_input_tokens": 4}}'
    )
    embeddings_json = b'{"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}}'
    sse_type = b"content-type: text/event-stream"
    json_type = b"content-type: application/json"
    return [
        b"\x00\x00\x02\x10\x30" + anthropic_sse,
        b"\x00\x03\x00" + openai_sse,
        b"\x00\x00\x01\x05" + responses_sse,
        b"\x01\x00\x01\x02\x08\x10" + openai_json,
        b"\x01\x02\x02\x01\x04" + anthropic_json,
        b"\x01\x00\x01\x00" + embeddings_json,
        b"\x02" + _http(b"200 OK", [json_type], openai_json),
        b"\x02" + _http(b"200 OK", [sse_type], openai_sse, chunked=True),
        b"\x02" + _http(b"200 OK", [sse_type, b"connection: close, x-drop"], anthropic_sse),
        b"\x02" + _http(b"429 Too Many Requests", [json_type], b'{"error": "slow down"}'),
        b"\x02" + _http(b"503 Service Unavailable", [], b""),
        b"\x02" + _http(b"204 No Content", [], b""),
        b"\x02HTTP/1.1 100 Continue\r\n\r\n" + _http(b"200 OK", [json_type], openai_json),
        b"\x02HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        b"\x02HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
        b"\r\n\r\n5\r\ndata:\r\n0\r\nx-trailer: 1\r\n\r\n",
        b"\x02HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + anthropic_json,
        b"\x03\x00\x00\x00\x00" + CHAT_BODY,
        b"\x03\x10chat/completions\x01\x0bstream=true\x01\x01\x08identity" + CHAT_BODY,
        b"\x03\x0c%2e%2e/admin\x01\x00\x02\x00\x05x-foo\x01\x04gzip" + CHAT_BODY,
    ]


DICTIONARY = [
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "model",
    "message_start",
    "message_delta",
    "response.completed",
    "response",
    "message",
    "type",
    "data:",
    "data: ",
    "event: ",
    "id: ",
    "retry: ",
    ": ping",
    "\r\n",
    "\r\n\r\n",
    "\n\n",
    "\r",
    "[DONE]",
    "\xef\xbb\xbf",
    "null",
    "true",
    "-1",
    "1e400",
    "9" * 30,
    "\\ud800",
    "[[[[",
    "HTTP/1.1 ",
    "HTTP/1.0 ",
    "200 OK",
    "content-length: ",
    "transfer-encoding: chunked",
    "connection: ",
    "close",
    "keep-alive",
    "content-type: ",
    "text/event-stream",
    "application/json",
    "0\r\n\r\n",
    "ffffffff\r\n",
]

KNOWN = known.FINDINGS["upstream"]


def main(argv: list[str]) -> None:
    for seed in seeds():  # every seed is a clean case: if not, the oracles are wrong
        check_one(seed)
    run("upstream", check_one, argv, seeds=seeds(), dictionary=DICTIONARY, known=KNOWN)


if __name__ == "__main__":
    main(sys.argv)
