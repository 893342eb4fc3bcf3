"""Idempotent retries with the x402 ``payment-identifier`` extension, on the real chain.

A retry with the same identifier and the same payment gets the stored answer without running the
handler or settling again; the same identifier with another payment gets 409.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from x402.http import decode_payment_response_header

from x402gate import PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.errors import ConfigurationError
from x402gate.testing.clients import x402_client
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain
payment_identifier = pytest.importorskip("x402.extensions.payment_identifier")

PAYMENT_ID = "pay_retry_demo_0123456789"


class FixedPaymentId:
    """An official-client extension that sends one chosen identifier with every payment."""

    key = "payment-identifier"

    def __init__(self, payment_id: str) -> None:
        self.payment_id = payment_id

    # No lifecycle or transport hooks: the identifier is added to the payload only.
    hooks = None
    transport_hooks = None

    def enrich_payment_payload(self, payment_payload: Any, payment_required: Any) -> Any:
        extensions = json.loads(
            json.dumps(payment_payload.extensions or payment_required.extensions or {})
        )
        payment_identifier.append_payment_identifier_to_extensions(extensions, self.payment_id)
        return payment_payload.model_copy(update={"extensions": extensions})


class Recording(httpx.AsyncBaseTransport):
    """Below the x402 transport: remembers the payment headers the client really sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers:
            self.sent.append(request.headers["payment-signature"])
        return await self.inner.handle_async_request(request)


@pytest.fixture
def gate(
    local_facilitator: Any, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=local_facilitator,
        store=f"sqlite:///{tmp_path / 'store.db'}",
    )
    yield g
    g.close()


def shop(gate: PaymentGate, runs: list[str], *, fail_first: bool = False) -> PaymentMiddleware:
    async def report(request: Request) -> JSONResponse:
        runs.append("report")
        if fail_first and len(runs) == 1:
            return JSONResponse({"error": "busy"}, status_code=503)
        return JSONResponse({"report": f"run {len(runs)}"}, headers={"X-Report": "yes"})

    app = Starlette(routes=[StarletteRoute("/report", report), StarletteRoute("/strict", report)])
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /report": gate.route("$0.01"),
            "GET /strict": gate.route("$0.01", payment_identifier="required"),
        },
    )


def paying_with_id(payer: Any, token: Any, inner: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """The official x402 client and httpx transport, with a fixed payment identifier."""
    from x402.http.clients import x402_httpx_transport

    client = x402_client(payer, asset=token)
    client.register_extension(FixedPaymentId(PAYMENT_ID))
    return httpx.AsyncClient(
        transport=x402_httpx_transport(client, inner), base_url="http://shop.test"
    )


def asgi(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


async def test_402_declares_the_extension(gate: PaymentGate) -> None:
    async with asgi(shop(gate, [])) as client:
        response = await client.get("/report")
    required = decode_payment_required(response.headers["payment-required"])
    assert required.extensions is not None
    assert required.extensions["payment-identifier"]["info"] == {"required": False}


async def test_a_retry_with_the_same_payment_gets_the_stored_answer_without_a_second_charge(
    gate: PaymentGate,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    runs: list[str] = []
    app = shop(gate, runs)
    recording = Recording(httpx.ASGITransport(app=app))
    async with paying_with_id(payer, test_token, recording) as client:
        first = await client.get("/report")
    assert first.status_code == 200 and runs == ["report"]
    (header,) = recording.sent
    sent = json.loads(base64.b64decode(header))
    assert sent["extensions"]["payment-identifier"]["info"]["id"] == PAYMENT_ID

    async with asgi(app) as raw:  # the client lost the answer and sends the same payment again
        retry = await raw.get("/report", headers={"PAYMENT-SIGNATURE": header})
    assert retry.status_code == 200
    assert retry.content == first.content and retry.headers["x-report"] == "yes"
    assert retry.headers["payment-response"] == first.headers["payment-response"]
    assert runs == ["report"]
    assert chain.tx_count(facilitator_account.address) == 1
    assert test_token.balance_of(pay_to) == 10_000


async def test_the_same_identifier_with_another_payment_is_a_409(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    runs: list[str] = []
    app = shop(gate, runs)
    for attempt in range(2):
        async with paying_with_id(payer, test_token, httpx.ASGITransport(app=app)) as client:
            response = await client.get("/report")
        if attempt == 0:
            assert response.status_code == 200
    assert response.status_code == 409
    assert response.json()["error"] == "payment_identifier_conflict"
    assert runs == ["report"] and test_token.balance_of(pay_to) == 10_000


async def _signed_with_id(app: Any, payer: Any, payment_id: str | None) -> dict[str, str]:
    async with asgi(app) as client:
        required = decode_payment_required(
            (await client.get("/report")).headers["payment-required"]
        )
    payload = sign_exact_payment(payer, required.accepts[0])
    if payment_id is not None:
        payload = payload.model_copy(
            update={
                "extensions": {
                    "payment-identifier": {"info": {"required": False, "id": payment_id}}
                }
            }
        )
    return {"PAYMENT-SIGNATURE": encode_payment(payload)}


async def test_concurrent_retries_run_the_handler_once(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    runs: list[str] = []
    app = shop(gate, runs)
    headers = await _signed_with_id(app, payer, PAYMENT_ID)
    async with asgi(app) as client:
        responses = await asyncio.gather(
            *(client.get("/report", headers=headers) for _ in range(8))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}
    assert {r.json()["error"] for r in responses if r.status_code == 409} <= {
        "payment_identifier_in_progress"
    }
    assert runs == ["report"] and test_token.balance_of(pay_to) == 10_000
    async with asgi(app) as client:  # once answered, every retry gets the same stored answer
        again = await client.get("/report", headers=headers)
    assert again.status_code == 200 and again.json() == {"report": "run 1"}


async def test_a_failed_handler_lets_the_same_payment_retry(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    runs: list[str] = []
    app = shop(gate, runs, fail_first=True)
    headers = await _signed_with_id(app, payer, PAYMENT_ID)
    async with asgi(app) as client:
        first = await client.get("/report", headers=headers)
        second = await client.get("/report", headers=headers)
    assert (first.status_code, second.status_code) == (503, 200)
    assert decode_payment_response_header(second.headers["payment-response"]).success
    assert runs == ["report", "report"] and test_token.balance_of(pay_to) == 10_000


@pytest.mark.parametrize(
    ("payment_id", "status", "code"),
    [
        (None, 400, "payment_identifier_required"),
        ("short", 400, "invalid_payment_identifier"),
        ("has spaces in it, so not valid", 400, "invalid_payment_identifier"),
    ],
)
async def test_required_or_malformed_identifiers_are_400(
    gate: PaymentGate,
    payer: Any,
    pay_to: str,
    test_token: Any,
    payment_id: str | None,
    status: int,
    code: str,
) -> None:
    runs: list[str] = []
    app = shop(gate, runs)
    headers = await _signed_with_id(app, payer, payment_id)
    async with asgi(app) as client:
        response = await client.get("/strict" if payment_id is None else "/report", headers=headers)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert runs == [] and test_token.balance_of(pay_to) == 0


def test_a_store_without_answers_must_turn_the_extension_off() -> None:
    from x402gate.assets import usdc
    from x402gate.stores.memory import MemoryStore

    class ClaimsOnly(MemoryStore):
        supports_idempotency = False

    gate = PaymentGate(
        pay_to="0x" + "12" * 20,
        assets=usdc("base"),
        facilitator=LocalFacilitatorStub(),
        store=ClaimsOnly(),
    )
    with pytest.raises(ConfigurationError, match="payment_identifier"):
        gate.route("$0.01")
    assert gate.route("$0.01", payment_identifier="off").payment_identifier == "off"


class LocalFacilitatorStub:
    async def verify(self, *a: Any) -> Any:
        raise AssertionError

    async def settle(self, *a: Any) -> Any:
        raise AssertionError

    async def supported(self) -> Any:
        raise AssertionError
