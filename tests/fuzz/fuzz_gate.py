"""Coverage-guided fuzzing of the gate's whole request path, with atheris (libFuzzer).

Every input becomes one HTTP request that goes through the real pure ASGI middleware
(:class:`~x402gate.asgi.PaymentMiddleware`) called in-process with raw
``scope``/``receive``/``send``, or through the WSGI middleware
(:class:`~x402gate.integrations.wsgi.PaymentMiddleware`) with a PEP 3333 environ, in front of
a trivial app, on a gate with a memory store. The first byte picks the adapter (``byte // 6``
odd: WSGI) and what the input controls (``byte % 6``); the following bytes are read front to
back by :class:`Reader`:

0. a raw ``PAYMENT-SIGNATURE`` / ``X-PAYMENT`` header value;
1. the JSON text of a payment (base64-encoded by the harness; seeds: a valid v2 payment and its
   v1 form, so the fuzzer starts from payments that reach signature checks);
2. a ``SIGN-IN-WITH-X`` header: a JSON object merged over a correctly signed answer to the
   route's challenge for the gate's public origin (the nonce is the gate's own, so the fuzzer
   reaches past the HMAC; signed by the payer without credit, or by the funded payer, whose
   sign-in is served from its credit), or the raw text;
3. an ``X402GATE-SESSION`` header: raw text, a token the gate issues for fuzzed claims (for the
   gate's origin, or a fuzzed origin and session start), or a ``v2`` token whose payload the
   fuzzer writes and the harness MACs with the gate's key, on the metered route or on
   ``GET /.well-known/x402/credit``;
4. the body, query string and repeated headers of requests to routes priced by
   :class:`~x402gate.pricing.MatchRules`, :class:`~x402gate.pricing.ModelTable` and
   :class:`~x402gate.metering.PerToken`;
5. a metered request paid from credit (a valid session token of a funded payer) whose handler
   answers with a body the fuzzer writes (JSON or ``text/event-stream``, in fuzzed chunks):
   the usage parsers on the real path, and the charge that follows.

The oracles, for every input:

* the app call raises nothing (on a server an escaping exception is a 500);
* exactly one ``http.response.start``, with a status below 500, and a complete body;
* nothing is logged at ERROR;
* the paid content is served only to a session token of the funded payer for the gate's origin
  or to the funded payer's own sign-in (the facilitator refuses every payment: the payer of the
  payments holds no funds); a session token in an answer is for that payer at that origin;
* a body :mod:`x402gate._json` accepts is nested no deeper than its ``MAX_DEPTH`` (mode 4);
* credit moves only by integer charges, none above the route's ``max_price``, and the ledger
  moves by exactly what was charged;
* ``SessionTokens.check`` raises nothing, and the claims of a token it accepts are a
  payment's (addresses, an ``eip155`` network, integer times), even for payloads signed with
  the gate's own key (mode 3).

Each input starts with no payment or sign-in nonce claimed (the seeds' are single-use).

Run it (``-max_total_time`` seconds, or ``-runs`` inputs; ``X402GATE_FUZZ_SECONDS``, 60 s by
default; any further positional argument is a corpus directory kept between runs)::

    .venv/bin/python tests/fuzz/fuzz_gate.py
    X402GATE_FUZZ_SECONDS=3600 .venv/bin/python tests/fuzz/fuzz_gate.py /tmp/gate-corpus

A failure writes its input to ``crash-*`` under ``X402GATE_FUZZ_ARTIFACTS`` and exits
non-zero; ``python tests/fuzz/fuzz_gate.py crash-...`` replays one input.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["x402gate", "x402"]):
    import x402.schemas
    from eth_account import Account
    from eth_account.messages import encode_defunct

    from x402gate import PaymentGate, _json
    from x402gate._web.types import Message
    from x402gate.asgi import PaymentMiddleware
    from x402gate.assets import Asset
    from x402gate.credit import SESSION_HEADER
    from x402gate.discovery import CREDIT_PATH
    from x402gate.integrations import wsgi
    from x402gate.metering import PerToken, TokenPrice
    from x402gate.pricing import MatchRules, ModelTable
    from x402gate.siwx import SIWX_HEADER, format_eip4361
    from x402gate.stores.base import credit_account
    from x402gate.stores.memory import MemoryStore
    from x402gate.testing.payments import (
        decode_payment_required,
        encode_payment,
        sign_exact_payment,
    )

import known
from _harness import run

NOW = 1_900_000_000.0
NETWORK = "eip155:31337"
ASSET = Asset(
    network=NETWORK,
    address="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    name="USD Coin",
    version="2",
)
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
SECRET = b"fuzz-harness-secret-" + b"k" * 16  # this harness only
BROKE = Account.from_key("0x" + "42" * 32)  # signs payments; holds nothing
FUNDED = Account.from_key("0x" + "43" * 32)  # has credit in the ledger
HOST = "shop.test"
ORIGIN = f"http://{HOST}"  # the gate's public origin: sign-ins and session tokens name it
CONTENT = b"the paid content"
FUNDS = 10**15
MAX_PRICE_UNITS = 500_000  # the metered route's max_price, $0.50, in 6-decimal units


class FixedClock:
    def now(self) -> float:
        return NOW


class RefusingFacilitator:
    """Supports the test network and refuses every payment, as for a payer without funds."""

    async def supported(self) -> x402.schemas.SupportedResponse:
        kind = x402.schemas.SupportedKind(x402_version=2, scheme="exact", network=NETWORK)
        return x402.schemas.SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> x402.schemas.VerifyResponse:
        return x402.schemas.VerifyResponse(is_valid=False, invalid_reason="insufficient_funds")

    async def settle(self, payload: Any, requirements: Any) -> x402.schemas.SettleResponse:
        return x402.schemas.SettleResponse(
            success=False, error_reason="insufficient_funds", transaction="", network=NETWORK
        )


class Shop:
    """A trivial ASGI app: ``/chat`` answers what the current input says, the rest CONTENT."""

    def __init__(self) -> None:
        self.runs = 0
        self.answer: tuple[bytes, list[bytes]] = (b"application/json", [CONTENT])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.runs += 1
        while (await receive()).get("more_body", False):
            pass
        content_type, chunks = self.answer
        headers = [(b"content-type", content_type)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks[:-1]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": CONTENT + chunks[-1]})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.runs += 1
        environ["wsgi.input"].read()
        content_type, chunks = self.answer
        start_response("200 OK", [("Content-Type", content_type.decode())])
        return [*chunks[:-1], CONTENT + chunks[-1]]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOOP = asyncio.new_event_loop()
ERRORS = _Errors()
logging.getLogger().addHandler(ERRORS)
# Start-up checks run at the first paid request (the facilitator answers supported()). Payments
# in flight are bounded as by default: with no node to read balances from, each payment is
# admitted through the store's in-flight ledger and vouched for by the facilitator's verify,
# which refuses it. No chain to reconcile from: reconciliation stays off.
GATE = PaymentGate(
    pay_to=PAY_TO,
    assets=ASSET,
    facilitator=RefusingFacilitator(),
    store="memory://",
    secret=SECRET,
    public_origin=ORIGIN,
    clock=FixedClock(),
)
CHARGES: list[int] = []


async def _on_event(event: Any) -> None:
    if event.kind == "charged":
        CHARGES.append(event.amount)


GATE.on_event(_on_event)
RULES = MatchRules(
    [
        {"match": {"body.model": "claude-3-opus*", "body.stream": True}, "price": "$0.20"},
        {"match": {"body.model": "claude-3-5-*", "header.x-tier": "batch"}, "price": "$0.02"},
        {"match": {"query.tier": ["pro", "team"]}, "price": "$0.10"},
        {"match": {"body.messages.0.role": "system", "method": "POST"}, "price": "$0.03"},
        {"match": {"body.n": 2}, "price": "$0.04"},
    ]
)
MODELS = ModelTable({"gpt-4o": "$0.05", "gpt-4o-mini": "$0.005", "gpt-4*": "$0.08"})
TOKENS = PerToken(
    {
        "gpt-4o": TokenPrice(input="$2.50", output="$10"),
        "claude-*": {"input": "$3", "output": "$15"},
    },
    max_output_tokens=4096,
    max_price="$0.50",
)
SHOP = Shop()
APP = PaymentMiddleware(
    SHOP,
    gate=GATE,
    routes={
        "GET /flat": "$0.01",
        "POST /flat": "$0.01",
        "POST /rules": RULES,
        "POST /models": MODELS,
        "POST /chat": TOKENS,
    },
)
WSGI_APP = wsgi.PaymentMiddleware(SHOP.wsgi, gate=GATE, routes=APP.routes)
ROUTES = ["/flat", "/rules", "/models", "/chat"]
PAYMENT_HEADERS = [b"payment-signature", b"x-payment", b"PAYMENT-SIGNATURE", b"X-Payment"]
EXTRA_HEADERS = [
    b"x-tier",
    b"content-type",
    b"accept",
    b"host",
    b"content-encoding",
    b"content-length",
    b"x-forwarded-host",
    SESSION_HEADER.lower().encode(),
    SIWX_HEADER.lower().encode(),
]


async def call(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    query: bytes = b"",
) -> list[Message]:
    """One request through the middleware; every message it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", HOST.encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await APP(scope, receive, send)
    if GATE._commits:  # charges committed after the answer: wait for them before checking
        await asyncio.gather(*list(GATE._commits))
    return sent


def call_wsgi(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    query: bytes = b"",
) -> list[Message]:
    """The same request through the WSGI middleware, as a WSGI server hands it over (PEP 3333:
    ``HTTP_*`` keys, repeated headers joined, latin-1 strings); its answer as ASGI messages."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": HOST,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        text = value.decode("latin-1")
        seen = key in environ and key not in ("HTTP_HOST", "CONTENT_LENGTH")
        environ[key] = f"{environ[key]},{text}" if seen else text
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        started.append((status, response_headers))
        return lambda data: None

    result = WSGI_APP(environ, start_response)
    try:
        answer = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, response_headers = started[-1]
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers]
    return [
        {"type": "http.response.start", "status": int(status.split(" ", 1)[0]), "headers": encoded},
        {"type": "http.response.body", "body": answer, "more_body": False},
    ]


def _run(coro: Any) -> Any:
    return LOOP.run_until_complete(coro)


# -- seeds built against the running gate ------------------------------------------------------


def _requirements(path: str, method: str = "GET", body: bytes = b"") -> Any:
    sent = _run(call(method, path, [], body))
    headers = dict(sent[0]["headers"])
    return decode_payment_required(headers[b"payment-required"].decode())


FLAT = _requirements("/flat").accepts[0]
SEED_PAYMENT = json.loads(
    base64.b64decode(
        encode_payment(
            sign_exact_payment(BROKE, FLAT, valid_before=int(NOW) + 300, nonce="0x" + "11" * 32)
        )
    )
)
SEED_V1 = {
    "x402Version": 1,
    "scheme": "exact",
    "network": NETWORK,
    "payload": SEED_PAYMENT["payload"],
}
CHAT_BODY = json.dumps(
    {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
).encode()
_CHALLENGE = _requirements("/chat", "POST", CHAT_BODY).extensions["sign-in-with-x"]["info"]


def _signed_siwx(account: Any) -> dict[str, Any]:
    fields = {**_CHALLENGE, "chainId": NETWORK, "type": "eip191"}
    message = format_eip4361(fields, account.address, 31337)
    signature = account.sign_message(encode_defunct(text=message)).signature.hex()
    return {**fields, "address": account.address, "signature": "0x" + signature.removeprefix("0x")}


SIWX_ANSWER = _signed_siwx(BROKE)
SIWX_FUNDED = _signed_siwx(FUNDED)  # signs in to the funded payer's credit
FUNDED_TOKEN = GATE.session_tokens.issue(FUNDED.address, NETWORK, ASSET.address, NOW, origin=ORIGIN)
FUNDED_CLAIMS = {
    "p": FUNDED.address.lower(),
    "n": NETWORK,
    "a": ASSET.address.lower(),
    "o": ORIGIN,
    "s": int(NOW),
    "e": int(NOW) + 900,
}
FUNDED_ACCOUNT = credit_account(NETWORK, ASSET.address, FUNDED.address)
GATE.store.credit_topup(FUNDED_ACCOUNT, FUNDS, "fuzz-funding", NOW)


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- one input ---------------------------------------------------------------------------------


class Reader:
    """Reads one input front to back: a byte per small choice, then slices of the rest.

    Simpler than :class:`atheris.FuzzedDataProvider` (which reads numbers from the end of the
    input), so seeds can be written by hand: ``b"\\x02\\x00" + json`` is mode 2, choice 0, JSON.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int_in(self, low: int, high: int) -> int:
        if self.pos >= len(self.data):
            return low
        self.pos += 1
        return low + self.data[self.pos - 1] % (high - low + 1)

    def flag(self) -> bool:
        return self.int_in(0, 1) == 1

    def take(self, count: int) -> bytes:
        self.pos += count
        return self.data[self.pos - count : self.pos]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


def request_of(data: bytes) -> tuple[int, str, str, list[tuple[bytes, bytes]], bytes, bytes]:
    """(mode, method, path, headers, body, query) for one fuzzer input."""
    fdp = Reader(data)
    mode = fdp.int_in(0, 5)
    SHOP.answer = (b"application/json", [b""])
    if mode == 0:
        name = PAYMENT_HEADERS[fdp.int_in(0, len(PAYMENT_HEADERS) - 1)]
        method = "POST" if fdp.flag() else "GET"
        value = fdp.rest().translate(None, b"\r\n\0")
        return mode, method, "/flat", [(name, value)], b"", b""
    if mode == 1:
        name = PAYMENT_HEADERS[fdp.int_in(0, 1)]
        return mode, "GET", "/flat", [(name, _b64(fdp.rest()))], b"", b""
    if mode == 2:
        choice = fdp.int_in(0, 3)  # odd: the raw text; 2: over the funded payer's answer
        raw = choice % 2 == 1
        text = fdp.rest().decode("utf-8", "replace")
        override = None if raw else _json_object(text)
        if override is None:
            value = text.encode("utf-8") if raw else _b64(text.encode("utf-8"))
        else:
            signed = SIWX_FUNDED if choice == 2 else SIWX_ANSWER
            value = _b64(json.dumps({**signed, **override}).encode())
        headers = [(SIWX_HEADER.lower().encode(), value.translate(None, b"\r\n\0"))]
        return mode, "POST", "/chat", headers, CHAT_BODY, b""
    if mode == 3:
        # choice % 3: the kind of token; choice % 6 >= 3: the credit balance endpoint instead.
        choice = fdp.int_in(0, 11)
        kind = choice % 3
        if kind == 0:
            value = fdp.rest()
        elif kind == 1:
            origin, started = ORIGIN, NOW
            if choice >= 6:  # another origin, a session begun earlier (past an hour: over)
                origin = _text(fdp.take(fdp.int_in(0, 40)))
                started = NOW - 60 * fdp.int_in(0, 255)
            payer = _text(fdp.take(fdp.int_in(0, 60)))
            network = _text(fdp.take(fdp.int_in(0, 20)))
            asset = _text(fdp.rest())
            token = GATE.session_tokens.issue(
                payer, network, asset, NOW, origin=origin, started=started
            )
            value = token.encode("latin-1", "replace")
        else:
            claims = fdp.rest()
            payload = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
            value = f"v2.{payload}.{GATE.session_tokens._mac(payload)}".encode()
        headers = [(SESSION_HEADER.lower().encode(), value.translate(None, b"\r\n\0"))]
        if choice % 6 >= 3:
            return mode, "GET", CREDIT_PATH, headers, b"", b""
        return mode, "POST", "/chat", headers, CHAT_BODY, b""
    if mode == 4:
        path = ROUTES[fdp.int_in(0, len(ROUTES) - 1)]
        query = fdp.take(fdp.int_in(0, 64)).translate(None, b" #\r\n\0")
        headers = []
        for _ in range(fdp.int_in(0, 4)):
            name = EXTRA_HEADERS[fdp.int_in(0, len(EXTRA_HEADERS) - 1)]
            value = fdp.take(fdp.int_in(0, 32)).translate(None, b"\r\n\0")
            headers.append((name, value))
        body = fdp.rest()
        return mode, "POST", path, headers, body, query
    # mode 5: a metered request served from credit; the handler's answer is fuzzed.
    sse = fdp.flag()
    cuts = sorted(fdp.int_in(0, 512) for _ in range(fdp.int_in(0, 4)))
    answer = fdp.rest()
    chunks = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
    SHOP.answer = (b"text/event-stream" if sse else b"application/json", chunks)
    headers = [(SESSION_HEADER.lower().encode(), FUNDED_TOKEN.encode())]
    return mode, "POST", "/chat", headers, CHAT_BODY, b""


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:  # iterative: the value may be deep
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend(
                (child, level + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def check_json_guard(body: bytes) -> None:
    """Every body is parsed by x402gate._json, which promises to refuse nesting deeper than
    MAX_DEPTH before the decoder sees it (deeper input overflows the C stack of a process whose
    recursion limit web3 raised): what it accepts must not be deeper."""
    try:
        value = _json.loads(body)
    except ValueError:
        return
    assert _depth(value) <= _json.MAX_DEPTH, f"nesting {_depth(value)} got past the JSON guard"


_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
_NETWORK = re.compile(r"eip155:[1-9][0-9]{0,18}")


def _signed_by_funded(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the sign-in header carries the funded payer's signed answer."""
    value = dict(headers).get(SIWX_HEADER.lower().encode(), b"")
    try:
        answer = json.loads(base64.b64decode(value.strip(), validate=True))
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(answer, dict)
        and answer.get("address") == SIWX_FUNDED["address"]
        and answer.get("signature") == SIWX_FUNDED["signature"]
    )


def check_token_claims(headers: list[tuple[bytes, bytes]]) -> None:
    """``SessionTokens.check`` never raises, and what it accepts has the claims a payment or
    sign-in gives: even under the gate's own MAC (mode 3 signs fuzzed payloads with it), a
    payer that is no address, a malformed network or a time that is no integer is no token."""
    token = dict(headers).get(SESSION_HEADER.lower().encode(), b"").decode("latin-1")
    claims = GATE.session_tokens.check(token, NOW)
    if claims is None:
        return
    assert _ADDRESS.fullmatch(claims.payer) and _ADDRESS.fullmatch(claims.asset), claims
    assert _NETWORK.fullmatch(claims.network), claims
    assert type(claims.expires_at) is int and type(claims.started) is int, claims
    assert 0 <= claims.started <= claims.expires_at and claims.expires_at > NOW, claims
    assert isinstance(claims.origin, str) and len(claims.origin) <= 300, claims


def forget_claims() -> None:
    """Every input starts from a store where no payment authorization or sign-in nonce is
    claimed: the seeds' signed payments and sign-in answer (single-use) then reach past their
    claims each time, not only on their first run, and an input's outcome does not depend on
    the inputs before it."""
    store = GATE.store
    assert isinstance(store, MemoryStore)
    store._entries.clear()


def check_one(data: bytes) -> None:
    """The properties, for one input; raises on a violation."""
    mode, method, path, headers, body, query = request_of(data)
    forget_claims()
    if mode == 3:
        check_token_claims(headers)
    check_request(data, mode, method, path, headers, body, query)


def check_request(
    data: bytes,
    mode: int,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    query: bytes,
) -> None:
    """The properties of one request through the adapter the input chose."""
    if mode == 4:
        check_json_guard(body)
    runs = SHOP.runs
    balance = GATE.store.credit_balance(FUNDED_ACCOUNT, NOW).available
    CHARGES.clear()
    ERRORS.records.clear()
    if data and (data[0] // 6) % 2:  # the same request through the WSGI middleware
        sent = call_wsgi(method, path, headers, body, query)
    else:
        sent = _run(call(method, path, headers, body, query))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    status = starts[0]["status"]
    assert status < 500, (status, sent)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and not bodies[-1].get("more_body", False), sent
    assert ERRORS.records == [], [r.getMessage() for r in ERRORS.records]
    served = SHOP.runs - runs
    if served:
        # Only the funded payer's credit opens the handler: a token the gate's key signed for
        # it at the gate's origin, or the funded payer's own signed answer to the challenge.
        assert path == "/chat" and status == 200
        if mode == 2:
            assert _signed_by_funded(headers), headers
        else:
            token = dict(headers).get(SESSION_HEADER.lower().encode(), b"").decode("latin-1")
            claims = GATE.session_tokens.check(token, NOW)
            assert claims is not None and mode in (3, 5), (mode, headers)
            assert claims.origin == ORIGIN, claims
            funded = (FUNDED.address.lower(), ASSET.address.lower())
            assert (claims.payer, claims.asset) == funded, claims
    else:
        assert CONTENT not in b"".join(m.get("body", b"") for m in bodies)
    # A session token handed out is for the funded payer's credit at the gate's origin (no
    # payment here succeeds, so no other payer has any).
    for name, value in starts[0]["headers"]:
        if name.lower() == SESSION_HEADER.lower().encode():
            issued = GATE.session_tokens.check(value.decode("latin-1"), NOW)
            assert issued is not None and issued.origin == ORIGIN, value
            assert issued.payer == FUNDED.address.lower() and served, (issued, served)
    after = GATE.store.credit_balance(FUNDED_ACCOUNT, NOW).available
    assert all(isinstance(c, int) and 0 <= c <= MAX_PRICE_UNITS for c in CHARGES), CHARGES
    assert balance - after == sum(CHARGES), (balance, after, CHARGES)
    assert len(CHARGES) <= served


def seeds() -> list[bytes]:
    """Inputs that reach deep: valid payments, a valid sign-in, tokens, priced bodies, usage."""
    v2 = json.dumps(SEED_PAYMENT).encode()
    v1 = json.dumps(SEED_V1).encode()
    sse = (
        b'data: {"type": "message_start", "message": {"model": "claude-3-5-haiku", "usage": '
        b'{"input_tokens": 25, "output_tokens": 1}}}\r\n\r\n: ping\r\n\r\n'
        b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}\r\n\r\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}\n\n'
        b"data: [DONE]\n\n"
    )
    usage = b'{"model": "gpt-4o", "usage": {"prompt_tokens": 9, "completion_tokens": 3}}'
    asgi = [
        b"\x00\x00\x00" + _b64(v2),
        b"\x00\x01\x01" + _b64(v1),
        b"\x01\x00" + v2,
        b"\x01\x01" + v1,
        b"\x02\x00" + json.dumps({"notBefore": _CHALLENGE["issuedAt"]}).encode(),
        b"\x02\x00" + json.dumps(SIWX_ANSWER).encode(),
        b"\x02\x02{}",  # the funded payer signs in: served from its credit
        b"\x02\x00" + json.dumps({"resources": [f"{ORIGIN}/chat", f"{ORIGIN}/flat"]}).encode(),
        b"\x02\x00"
        + json.dumps({"domain": "other.test", "uri": "http://other.test/chat"}).encode(),
        b"\x02\x00" + json.dumps({"statement": None, "expirationTime": None}).encode(),
        b"\x03\x00" + FUNDED_TOKEN.encode(),
        b"\x03\x03" + FUNDED_TOKEN.encode(),
        b"\x03\x02" + json.dumps({**FUNDED_CLAIMS, "a": "0x"}).encode(),
        b"\x03\x02" + json.dumps(FUNDED_CLAIMS).encode(),
        b"\x03\x05" + json.dumps({**FUNDED_CLAIMS, "o": "http://other.test"}).encode(),
        # Issued for the funded payer's claims, through SessionTokens.issue; then for another
        # origin, in a session begun 10 minutes earlier.
        b"\x03\x01\x2a"
        + FUNDED.address.encode()
        + b"\x0c"
        + NETWORK.encode()
        + ASSET.address.encode(),
        b"\x03\x07\x11http://other.test\x0a\x2a"
        + FUNDED.address.encode()
        + b"\x0c"
        + NETWORK.encode()
        + ASSET.address.encode(),
        b"\x04\x01\x08tier=pro\x01\x00\x05batch" + b'{"model": "claude-3-5-haiku", "stream": true}',
        # Repeated query fields, headers and JSON keys.
        b"\x04\x01\x12tier=free&tier=pro\x02\x00\x05batch\x00\x04free"
        + b'{"model": "claude-3-5-haiku", "model": "claude-3-opus-x", "stream": true}',
        b"\x04\x02\x00\x00" + b'{"model": "gpt-4o-mini", "messages": [{"role": "system"}]}',
        b"\x04\x03\x00\x00" + CHAT_BODY,
        b"\x04\x02\x00\x00" + '{"model": "gpt-4o", "messages": [["\u2200"]]}'.encode("utf-16-le"),
        b"\x05\x01\x02\x10\x40" + sse,
        b"\x05\x00\x00" + usage,
    ]
    return asgi + [bytes([seed[0] + 6]) + seed[1:] for seed in asgi]  # and through WSGI


DICTIONARY = [
    "x402Version",
    "accepted",
    "payload",
    "authorization",
    "signature",
    "from",
    "to",
    "value",
    "validAfter",
    "validBefore",
    "nonce",
    "scheme",
    "network",
    "asset",
    "amount",
    "payTo",
    "maxTimeoutSeconds",
    "extra",
    "extensions",
    "exact",
    NETWORK,
    "domain",
    "address",
    "uri",
    "version",
    "chainId",
    "issuedAt",
    "expirationTime",
    "notBefore",
    "requestId",
    "resources",
    "statement",
    "type",
    "eip191",
    "v1.",
    '"p"',
    '"n"',
    '"a"',
    '"e"',
    "model",
    "messages",
    "role",
    "system",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "gpt-4o",
    "claude-3-5-",
    "claude-3-opus",
    "tier=",
    "pro",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "message_start",
    "message_delta",
    "response.completed",
    "response",
    "data: ",
    "\r\n\r\n",
    "[DONE]",
    "\xef\xbb\xbf",
    "null",
    "true",
    "1e400",
    "-1",
    "\\u0000",
    "\\ud800",
    "[[[[",
]

KNOWN = known.FINDINGS["gate"]


def main(argv: list[str]) -> None:
    for seed in seeds():  # every seed is a clean case: if not, the oracles are wrong
        check_one(seed)
    run("gate", check_one, argv, seeds=seeds(), dictionary=DICTIONARY, known=KNOWN, max_len=8192)


if __name__ == "__main__":
    main(sys.argv)
