"""Hostile JSON from a client or an upstream never crashes the process nor holds it for long.

web3 (via py_ecc) raises the interpreter's recursion limit to 100,000 at import; CPython's JSON
decoder then overflows the C stack on a few hundred kilobytes of ``[`` — a segfault, not an
exception. These tests run with that limit in place, as a real x402gate process has it.

Ten megabytes (the gateway's body limit) of each hostile kind cost well under a second of CPU
through the request parser and the usage meters; the guard's depth measure is checked against
a plain scanner on random documents.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402gate import _json
from x402gate.errors import PaymentError
from x402gate.metering import JSONUsageMeter, SSEUsageMeter, usage_from_json
from x402gate.protocol import decode_payment
from x402gate.request import RequestInfo

NESTED = b"[" * 1_000_000
TEN_MIB = 10 << 20
JSON = {"content-type": "application/json"}


@pytest.fixture(autouse=True)
def web3_recursion_limit() -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    yield
    sys.setrecursionlimit(old)


def test_loads_refuses_deep_nesting_quickly() -> None:
    with pytest.raises(ValueError, match=r"nested deeper|more than"):
        _json.loads(NESTED)
    with pytest.raises(ValueError, match="nested deeper"):
        _json.loads(b"[" * 100_000)
    with pytest.raises(ValueError, match="nested deeper"):
        _json.loads(b'{"a":' * 300 + b"1" + b"}" * 300)


def test_loads_accepts_normal_and_tricky_json() -> None:
    assert _json.loads(b'{"a": [1, {"b": "[[[[{{{{"}]}') == {"a": [1, {"b": "[[[[{{{{"}]}
    assert _json.loads("[" * 200 + "]" * 200) == eval("[" * 200 + "]" * 200)
    wide = b"[" + b",".join(b"[1]" for _ in range(10_000)) + b"]"
    assert len(_json.loads(wide)) == 10_000


def test_request_body_nested_deeply_is_refused_for_pricing() -> None:
    for body in (NESTED, b"[" * 1000):
        with pytest.raises(PaymentError) as info:
            RequestInfo("POST", "/x", body=body).json()
        assert (info.value.status_code, info.value.code) == (400, "invalid_body")


def test_payment_header_nested_deeply_is_a_400() -> None:
    header = base64.b64encode(b"[" * 12_000).decode()
    with pytest.raises(PaymentError) as info:
        decode_payment({"PAYMENT-SIGNATURE": header})
    assert info.value.status_code == 400


def test_usage_meters_survive_hostile_upstream_bodies() -> None:
    assert usage_from_json(NESTED) is None
    meter = JSONUsageMeter()
    meter.feed(NESTED)
    meter.close()
    assert meter.usage is None
    sse = SSEUsageMeter()
    sse.feed(b'data: {"usage":' + b"[" * 500_000 + b"\n\n")
    sse.close()
    assert sse.usage is None


async def test_a_paid_route_reading_the_body_answers_a_hostile_body() -> None:
    from eth_account import Account
    from starlette.applications import Starlette
    from starlette.routing import Route as StarletteRoute
    from x402.schemas import (
        PaymentPayload,
        PaymentRequirements,
        SettleResponse,
        SupportedKind,
        SupportedResponse,
        VerifyResponse,
    )

    from x402gate import MatchRules, PaymentGate
    from x402gate.asgi import PaymentMiddleware
    from x402gate.assets import usdc

    class Unused:
        async def verify(
            self, payload: PaymentPayload, requirements: PaymentRequirements
        ) -> VerifyResponse:
            raise AssertionError

        async def settle(
            self, payload: PaymentPayload, requirements: PaymentRequirements
        ) -> SettleResponse:
            raise AssertionError

        async def supported(self) -> SupportedResponse:
            kind = SupportedKind(x402_version=2, scheme="exact", network="eip155:8453")
            return SupportedResponse(kinds=[kind], extensions=[], signers={})

    gate = PaymentGate(
        pay_to=Account.create().address,
        assets=usdc("base"),
        facilitator=Unused(),
        store="memory://",
    )
    rules = MatchRules([{"match": {"body.model": "big-*"}, "price": "$0.05"}], fallback="$0.01")

    async def chat(request: Any) -> Any:
        raise AssertionError("an unreadable body must not reach the handler")

    inner = Starlette(routes=[StarletteRoute("/chat", chat, methods=["POST"])])
    app = PaymentMiddleware(inner, gate=gate, routes={"POST /chat": rules})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/chat", content=NESTED[: 1 << 20 - 1])
    # Refused, not priced by the fallback: a handler reading it would not see "not JSON".
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"


def _keys(count: int) -> bytes:
    return b"{" + b",".join(b'"k%012d":%d' % (i, i) for i in range(count)) + b"}"


# Each kind of body: ten megabytes, and what pricing makes of it (None: JSON that prices).
HOSTILE: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "deep [": (lambda: b"[" * TEN_MIB, "invalid_body"),
    "deep {": (lambda: b'{"a":' * (TEN_MIB // 5), "invalid_body"),
    "UTF-16 with a BOM": (lambda: ("[" * (TEN_MIB // 2 - 1)).encode("utf-16"), "invalid_body"),
    "UTF-16 without a BOM": (
        lambda: ('{"a":' * (TEN_MIB // 10)).encode("utf-16-le"),
        "invalid_body",
    ),
    "UTF-32 with a BOM": (lambda: ("[" * (TEN_MIB // 4 - 1)).encode("utf-32"), "invalid_body"),
    "UTF-32 without a BOM": (lambda: ("[" * (TEN_MIB // 4)).encode("utf-32-be"), "invalid_body"),
    "UTF-8 BOM": (lambda: b"\xef\xbb\xbf" + b"[" * TEN_MIB, "invalid_body"),
    "encoded surrogates": (lambda: b'["\xed\xa0\x80' + b"x" * TEN_MIB + b'"]', "invalid_body"),
    "long string of escapes": (lambda: b'["' + b'\\"\\\\[' * (TEN_MIB // 5) + b'"]', None),
    "unterminated string": (lambda: b"[" * 300 + b'"' + b'\\"[' * (TEN_MIB // 3), "invalid_body"),
    "many empty arrays": (lambda: b"[" + b"[]," * (TEN_MIB // 3) + b"1]", "invalid_body"),
    "many objects": (lambda: b"[" + b"{}," * (TEN_MIB // 3) + b"{}]", "invalid_body"),
    "many keys": (lambda: _keys(TEN_MIB // 22), "invalid_body"),
    "keys under the limit": (lambda: _keys(190_000) + b" " * (TEN_MIB - 5_000_000), None),
    "duplicate keys": (lambda: b"{" + b'"a":1,' * (TEN_MIB // 6) + b'"a":2}', "invalid_body"),
    "duplicate keys under the limit": (
        lambda: b'{"s": "' + b"x" * (TEN_MIB - 2_000_000) + b'",' + b'"a":1,' * 190_000 + b'"a":2}',
        "invalid_body",
    ),
    "huge integer": (lambda: b"[1" + b"1" * TEN_MIB + b"]", "invalid_body"),
    "huge float": (lambda: b"[1." + b"1" * TEN_MIB + b"]", None),
    "huge exponent": (lambda: b"[1e" + b"9" * TEN_MIB + b"]", None),
    "nesting at the limit, padded": (
        lambda: (
            b"[" + b",".join([b"[" * 250 + b'"' + b"x" * 14_000 + b'"' + b"]" * 250] * 700) + b"]"
        ),
        None,
    ),
    "chains of brackets": (
        lambda: b"[" + b",".join([b"[" * 200 + b"1" + b"]" * 200] * 490) + b" " * 9_500_000 + b"]",
        None,
    ),
    "binary": (lambda: bytes(range(256)) * (TEN_MIB // 256), None),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_ten_megabyte_hostile_body_costs_under_a_second(kind: str) -> None:
    make, refusal = HOSTILE[kind]
    body = make()
    assert 9 << 20 <= len(body) <= 11 << 20
    request = RequestInfo("POST", "/chat", headers=JSON, body=body)
    started = time.process_time()
    try:
        request.json()
        outcome = None
    except PaymentError as exc:
        assert exc.status_code == 400
        outcome = exc.code
    spent = time.process_time() - started
    assert outcome == refusal
    assert spent < 1.0, f"{kind}: {spent:.3f} s"


SSE_HOSTILE: dict[str, Callable[[], bytes]] = {
    "blank lines": lambda: b"\n" * TEN_MIB,
    "carriage returns": lambda: b"\r" * TEN_MIB,
    "comments": lambda: b":\n" * (TEN_MIB // 2),
    "data lines, no event end": lambda: b"data: x\n" * (TEN_MIB // 8),
    "tiny events": lambda: b"data: x\n\n" * (TEN_MIB // 9),
    "usage decoys": lambda: b'data: {"usage"\n\n' * (TEN_MIB // 16),
    "usage: null in every chunk": lambda: (
        b'data: {"choices":[],"usage":null}\n\n' * (TEN_MIB // 37)
    ),
    "one huge line": lambda: b"data: " + b"x" * TEN_MIB,
    "one huge usage event": lambda: b'data: {"usage": {"a": "' + b"x" * TEN_MIB + b'"}}\n\n',
    "deep usage": lambda: b'data: {"usage":' + b"[" * (900 << 10) + b"\n\n",
    "garbage": lambda: bytes(range(256)) * (TEN_MIB // 256),
}


@pytest.mark.parametrize("kind", list(SSE_HOSTILE))
def test_a_ten_megabyte_hostile_stream_costs_under_a_second(kind: str) -> None:
    # A blank line ends whatever the hostile part left open; then a real usage event.
    usage = b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    body = SSE_HOSTILE[kind]() + b"\n\n" + usage
    sse, whole = SSEUsageMeter(), JSONUsageMeter()
    started = time.process_time()
    for start in range(0, len(body), 1 << 16):
        sse.feed(body[start : start + (1 << 16)])
        whole.feed(body[start : start + (1 << 16)])
    sse.close()
    whole.close()
    assert whole.usage is None or whole.usage.output_tokens == 4
    spent = time.process_time() - started
    # The stream stays readable after any of it: the last event's usage counts.
    assert (sse.usage.input_tokens, sse.usage.output_tokens) == (3, 4)  # type: ignore[union-attr]
    assert spent < 1.0, f"{kind}: {spent:.3f} s"


def _structure_depth(tokens: list[str]) -> int:
    """The deepest nesting of a token list, scanned plainly (stopping below zero)."""
    depth = deepest = 0
    for token in tokens:
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
            if depth < 0:
                break
    return deepest


_STRING_CHARS = st.sampled_from(["a", "[", "]", "{", "}", ",", '\\"', "\\\\", "\\n"])
_TOKENS = st.one_of(
    st.sampled_from(["[", "]", "{", "}", ",", "1", " "]),
    st.lists(_STRING_CHARS, max_size=4).map(lambda chars: '"' + "".join(chars) + '"'),
)


@given(tokens=st.lists(_TOKENS, max_size=300))
@settings(max_examples=500, deadline=None)
def test_the_guard_never_lets_deeper_nesting_through(tokens: list[str]) -> None:
    limit = 12
    deepest = _structure_depth(tokens)
    text = "".join(tokens).encode()
    try:
        _json._check_structure(text, limit, 10**9)
        refused = False
    except _json.UnsafeJSON:
        refused = True
    if deepest > limit:
        assert refused
    if deepest <= limit - 8:  # the margin of the guard's pair-removal rounds
        assert not refused
