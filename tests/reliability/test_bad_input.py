"""Hostile input through the whole ASGI request path, and every single-field forgery of a payment.

* Every single-field mutation of a valid payment (each authorization field, each signature byte,
  the malleable twin of the signature, each field of ``accepted``, ``x402Version``) is refused
  with its own code; none runs the handler or sends a transaction, and the untouched payment
  still pays afterwards (refusals burn nothing).
* Hypothesis drives random and mutated payment headers, and random methods, paths, query
  strings, headers, bodies (chunked, or cut by a disconnect) through the pure ASGI middleware
  called directly with raw ``scope``/``receive``/``send``: no unhandled exception, no error
  logged, no 5xx (the 502/503 of a failing dependency cannot happen here: the chain and the
  store are up), a well-formed ASGI answer, and nothing served unpaid. The payer of the valid
  payments that mutations start from holds no tokens, so nothing can ever legitimately pay.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain

PRICE = 10_000
# Examples per hypothesis test; raise it for a longer hunt (docs/reliability.md).
EXAMPLES = int(os.environ.get("X402GATE_HYPOTHESIS_EXAMPLES", "400"))
CONTENT = "the paid content"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class Shop:
    def __init__(self, gate: PaymentGate) -> None:
        self.paid_runs = 0

        async def paid(request: Request) -> JSONResponse:
            self.paid_runs += 1
            return JSONResponse({"secret": CONTENT})

        async def free(request: Request) -> PlainTextResponse:
            return PlainTextResponse("free")

        app = Starlette(
            routes=[
                Route("/paid", paid, methods=["GET", "POST"]),
                Route("/free", free, methods=["GET", "POST"]),
            ]
        )
        self.app = PaymentMiddleware(
            app, gate=gate, routes={"GET /paid": "$0.01", "POST /paid": "$0.01"}
        )


@pytest.fixture
def gate(chain: Any, facilitator_account: Any, test_token: Any, pay_to: str, tmp_path: Any) -> Any:
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    g = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )
    yield g
    g.close()


def _asgi_client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


async def _requirements(app: Any) -> Any:
    async with _asgi_client(app) as client:
        response = await client.get("/paid")
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encode(document: Any) -> str:
    return _b64(json.dumps(document).encode())


# -- every single-field mutation ---------------------------------------------------------------

SIGNATURE_CODE = "invalid_exact_evm_payload_signature"
MALFORMED = (400, "invalid_payment_header")
_DELETE = object()
_RECIPIENT = "invalid_exact_evm_payload_recipient_mismatch"
_VALUE = "invalid_exact_evm_payload_authorization_value_mismatch"
_TIMEOUT = "max_timeout_mismatch"


def _mutations(valid: dict[str, Any], other: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(name, mutated payment, expected (status, code)) for every single-field change."""

    def change(path: str, value: Any, expected: Any, *, name: str | None = None) -> Any:
        doc = copy.deepcopy(valid)
        *parents, leaf = path.split(".")
        target = doc
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
        return (name or f"{path}={value!r}"[:80], doc, expected)

    auth = valid["payload"]["authorization"]
    accepted = valid["accepted"]
    sig = bytes.fromhex(valid["payload"]["signature"][2:])

    yield change("x402Version", 1, MALFORMED)
    yield change("x402Version", 3, MALFORMED)
    yield change("x402Version", "2", MALFORMED)
    yield change("x402Version", True, MALFORMED)
    yield change("x402Version", _DELETE, MALFORMED, name="x402Version deleted")

    bad_sig = (402, SIGNATURE_CODE)
    yield change("payload.authorization.from", other, bad_sig)
    yield change("payload.authorization.to", other, (402, _RECIPIENT))
    yield change("payload.authorization.value", str(PRICE + 1), (402, _VALUE))
    yield change("payload.authorization.value", str(PRICE - 1), (402, _VALUE))
    yield change("payload.authorization.validAfter", "1", bad_sig)
    yield change("payload.authorization.validBefore", str(int(auth["validBefore"]) - 1), bad_sig)
    nonce = bytearray.fromhex(auth["nonce"][2:])
    nonce[-1] ^= 1
    yield change("payload.authorization.nonce", "0x" + nonce.hex(), bad_sig)
    for field in auth:
        yield change(f"payload.authorization.{field}", _DELETE, (400, "invalid_payload"))

    for index in range(len(sig)):
        flipped = bytearray(sig)
        flipped[index] ^= 0x01
        yield change(
            "payload.signature", "0x" + flipped.hex(), bad_sig, name=f"signature byte {index} ^ 1"
        )
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    other_v = bytes([55 - v])  # 27 <-> 28
    yield change("payload.signature", "0x" + (r + sig[32:64] + other_v).hex(), bad_sig, name="v")
    # The other valid ECDSA signature of the same message by the same key: refused on chain by
    # EIP-3009 tokens (low-s rule), so it must be refused here too.
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + other_v
    yield change("payload.signature", "0x" + twin.hex(), bad_sig, name="malleable twin (n - s)")
    yield change("payload.signature", "0x" + sig[:64].hex(), bad_sig, name="signature truncated")
    yield change("payload.signature", "0x" + (sig + b"\0").hex(), bad_sig, name="signature + 1 B")
    yield change("payload.signature", _DELETE, (400, "invalid_payload"), name="no signature")

    yield change("accepted.scheme", "upto", (402, "unsupported_scheme"))
    yield change("accepted.network", "eip155:8453", (402, "network_mismatch"))
    yield change("accepted.asset", other, (402, "asset_mismatch"))
    yield change("accepted.amount", str(PRICE + 1), (402, _VALUE))
    yield change("accepted.amount", str(PRICE - 1), (402, _VALUE))
    yield change("accepted.payTo", other, (402, _RECIPIENT))
    yield change("accepted.maxTimeoutSeconds", accepted["maxTimeoutSeconds"] + 1, (402, _TIMEOUT))
    yield change("accepted.extra.name", "USDC", (402, "extra_mismatch"))
    yield change("accepted.extra.version", "1", (402, "extra_mismatch"))
    yield change("accepted.extra", {}, (402, "extra_mismatch"))
    for field in ("scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds"):
        yield change(f"accepted.{field}", _DELETE, MALFORMED)
    yield change("accepted", _DELETE, MALFORMED)
    yield change("payload", _DELETE, MALFORMED)


async def test_every_single_field_mutation_of_a_valid_payment_is_refused(
    gate: PaymentGate, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    shop = Shop(gate)
    requirements = await _requirements(shop.app)
    payment = sign_exact_payment(payer, requirements)
    valid = json.loads(base64.b64decode(encode_payment(payment)))
    other = chain.new_account(token=test_token, token_amount=PRICE * 10).address
    block = chain.block_number()

    outcomes: dict[str, tuple[int, str]] = {}
    wrong: dict[str, Any] = {}
    async with _asgi_client(shop.app) as client:
        for name, mutated, expected in _mutations(valid, other):
            response = await client.get("/paid", headers={"PAYMENT-SIGNATURE": _encode(mutated)})
            outcome = (response.status_code, response.json()["error"])
            outcomes[name] = outcome
            if outcome != expected or CONTENT in response.text:
                wrong[name] = outcome
        assert len(outcomes) > 100
        assert wrong == {}
        assert shop.paid_runs == 0
        assert chain.block_number() == block
        # Nothing above burnt the authorization: the untouched payment pays, once.
        paid = await client.get("/paid", headers={"PAYMENT-SIGNATURE": encode_payment(payment)})
    assert paid.status_code == 200 and CONTENT in paid.text
    assert test_token.balance_of(pay_to) == PRICE


# -- hypothesis: the whole request path --------------------------------------------------------

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VISIBLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")
PAYMENT_HEADERS = ["payment-signature", "x-payment", "PAYMENT-SIGNATURE", "Payment-Signature"]
INTERESTING = [
    "",
    "0",
    "-1",
    "1e3",
    " 10000",
    "10000 ",
    "1_0000",
    "\u0661\u0660\u0660\u0660\u0660",  # Arabic-Indic digits: isdigit() but not ASCII
    "9" * 100,
    str(2**256),
    "0x",
    "0x" + "00" * 20,
    "0x" + "ff" * 32,
    "0x" + "00" * 65,
    "0x" + "zz" * 65,
    "0x" + "ab" * 5000,
    "eip155:31337",
    "eip155:0",
    "eip155:-1",
    "exact",
    "\x00",
    "\ud800",
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**300)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(INTERESTING)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    return found


@st.composite
def mutated_payment(draw: st.DrawFn, valid: dict[str, Any]) -> str:
    """base64 JSON of the valid payment with 1-4 structural mutations."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)[1:]  # every key path, through objects only
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["set", "delete", "add", "retype"]))
        if action == "set":
            parent[path[-1]] = draw(json_value)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=12))] = draw(json_value)
        elif action == "retype":
            value = parent[path[-1]]
            parent[path[-1]] = (
                int(value)
                if isinstance(value, str) and value.isascii() and value.isdigit()
                else [value]
            )
    text = json.dumps(doc, allow_nan=True)
    encoding = draw(st.sampled_from(["std", "urlsafe", "unpadded", "spaces"]))
    raw = text.encode("utf-8", "surrogatepass")
    if encoding == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    if encoding == "unpadded":
        return _b64(raw).rstrip("=")
    if encoding == "spaces":
        return f"  {_b64(raw)}\t"
    return _b64(raw)


def payment_header_value(valid: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.one_of(
        mutated_payment(valid),
        st.text(max_size=200),
        st.binary(max_size=300).map(_b64),
        json_value.map(lambda v: _b64(json.dumps(v).encode("utf-8", "surrogatepass"))),
        st.just(_b64(json.dumps(valid).encode()) * 12),  # larger than the 16 KiB cap
    )


def header_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def request_strategy(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    method = st.sampled_from(
        ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "Post"]
    ) | st.text(alphabet=TCHAR, min_size=1, max_size=8)
    path = st.sampled_from(
        ["/paid", "/paid/", "/paid//", "/PAID", "/paid/x", "//paid", "/free", "/", "/nothing"]
    ) | st.text(max_size=30).map(lambda t: "/" + t)
    # What an HTTP server can hand over: token names, values of any byte but CR, LF and NUL
    # (obs-text included), a query string of visible ASCII.
    random_header = st.tuples(
        st.text(alphabet=TCHAR, min_size=1, max_size=20).map(str.encode),
        st.binary(max_size=60).map(lambda b: b.translate(None, b"\r\n\0")),
    )
    payment_header = st.tuples(
        st.sampled_from(PAYMENT_HEADERS).map(str.encode),
        payment_header_value(valid).map(header_bytes),
    )
    special = st.sampled_from(
        [
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
            (b"content-type", b"application/json"),
            (b"content-length", b"5"),
            (b"content-length", b"-1"),
            (b"host", b"\xff\xfe"),
            (b"x-forwarded-host", b"evil.example"),
            (b"transfer-encoding", b"chunked"),
        ]
    )
    return st.fixed_dictionaries(
        {
            "method": method,
            "path": path,
            "query": st.text(alphabet=VISIBLE_ASCII, max_size=40).map(str.encode),
            "headers": st.lists(random_header | payment_header | special, max_size=6),
            "body": st.lists(st.binary(max_size=400), max_size=4),
            "disconnect": st.sampled_from([False, False, False, True]),
        }
    )


async def call_asgi(app: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one request through the ASGI app; every message it sends, in order."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode("utf-8", "surrogatepass"),
        "query_string": request["query"],
        "root_path": "",
        "headers": request["headers"],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in request["body"]
    ]
    if request["disconnect"]:
        incoming.append({"type": "http.disconnect"})
    else:
        incoming.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def hostile_setup(gate: PaymentGate, chain: Any) -> Iterator[tuple[Shop, dict[str, Any], Any]]:
    shop = Shop(gate)
    loop = asyncio.new_event_loop()
    requirements = loop.run_until_complete(_requirements(shop.app))
    # Mutations start from a valid payment by a payer without tokens: nothing can pay.
    broke = Account.create()
    valid = json.loads(base64.b64decode(encode_payment(sign_exact_payment(broke, requirements))))
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        yield shop, valid, (loop, errors)
    finally:
        logging.getLogger().removeHandler(errors)
        loop.close()


# 307: Starlette's redirect_slashes for "/paid//" and the like, towards the paid route itself.
ALLOWED = {200, 307, 400, 402, 404, 405, 413}


def _check_answer(shop: Shop, request: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if request["disconnect"] and not starts:
        return  # the client left before the body was read: nothing to answer
    assert len(starts) == 1, sent
    status = starts[0]["status"]
    assert status in ALLOWED, (status, sent)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and not bodies[-1].get("more_body", False)
    body = b"".join(m.get("body", b"") for m in bodies)
    assert CONTENT.encode() not in body
    assert shop.paid_runs == 0
    if status == 402:
        headers = dict(starts[0]["headers"])
        required = decode_payment_required(headers[b"payment-required"].decode())
        assert required.accepts and required.accepts[0].amount == str(PRICE)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.timeout(max(120, EXAMPLES // 5))
@given(data=st.data())
def test_hostile_payment_headers_are_refused_cleanly(
    hostile_setup: tuple[Shop, dict[str, Any], Any], data: st.DataObject
) -> None:
    shop, valid, (loop, errors) = hostile_setup
    value = data.draw(payment_header_value(valid))
    name = data.draw(st.sampled_from(PAYMENT_HEADERS))
    request = {
        "method": data.draw(st.sampled_from(["GET", "HEAD", "POST"])),
        "path": "/paid",
        "query": b"",
        "headers": [(name.encode(), header_bytes(value))],
        "body": [],
        "disconnect": False,
    }
    sent = loop.run_until_complete(call_asgi(shop.app, request))
    _check_answer(shop, request, sent)
    status = sent[0]["status"]
    assert status in (400, 402, 413)
    assert errors.records == []


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.timeout(max(120, EXAMPLES // 5))
@given(data=st.data())
def test_hostile_requests_never_break_the_middleware_or_get_served_unpaid(
    hostile_setup: tuple[Shop, dict[str, Any], Any], data: st.DataObject
) -> None:
    shop, valid, (loop, errors) = hostile_setup
    request = data.draw(request_strategy(valid))
    sent = loop.run_until_complete(call_asgi(shop.app, request))
    _check_answer(shop, request, sent)
    assert errors.records == []
