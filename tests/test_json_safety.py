"""Deeply nested JSON from a client or an upstream never crashes the process.

web3 (via py_ecc) raises the interpreter's recursion limit to 100,000 at import; CPython's JSON
decoder then overflows the C stack on a few hundred kilobytes of ``[`` — a segfault, not an
exception. These tests run with that limit in place, as a real x402gate process has it.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator

import httpx
import pytest

from x402gate import _json
from x402gate.errors import PaymentError
from x402gate.metering import JSONUsageMeter, SSEUsageMeter, usage_from_json
from x402gate.protocol import decode_payment
from x402gate.request import RequestInfo

NESTED = b"[" * 1_000_000


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

    from x402gate import MatchRules, PaymentGate
    from x402gate.assets import usdc
    from x402gate.integrations.asgi import PaymentMiddleware

    class Unused:
        async def verify(self, *a: object) -> object:
            raise AssertionError

        async def settle(self, *a: object) -> object:
            raise AssertionError

        async def supported(self) -> object:
            from x402.schemas import SupportedKind, SupportedResponse

            kind = SupportedKind(x402_version=2, scheme="exact", network="eip155:8453")
            return SupportedResponse(kinds=[kind], extensions=[], signers={})

    gate = PaymentGate(
        pay_to=Account.create().address,
        assets=usdc("base"),
        facilitator=Unused(),
        store="memory://",
    )
    rules = MatchRules([{"match": {"body.model": "big-*"}, "price": "$0.05"}], fallback="$0.01")
    app = PaymentMiddleware(Starlette(), gate=gate, routes={"POST /chat": rules})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/chat", content=NESTED[: 1 << 20 - 1])
    # Refused, not priced by the fallback: a handler reading it would not see "not JSON".
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
