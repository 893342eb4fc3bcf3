"""The core paid flow end to end: official x402 clients, a real anvil chain, the ASGI middleware.

Every assertion is one a user would check: status and error code, whether the handler ran,
whether a transaction was sent, and how balances moved on chain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from x402.http import decode_payment_response_header
from x402.schemas import PaymentRequirements

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.demo import serve_in_thread
from x402gate.facilitators import HTTPFacilitator
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01 in USDC atomic units


class Shop:
    """A small paid API that counts how often each handler really ran."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.payments: list[Any] = []

    def _hit(self, name: str, request: Request) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.payments.append(request.state.payment)

    def app(self, gate: PaymentGate) -> PaymentMiddleware:
        async def paid(request: Request) -> JSONResponse:
            self._hit("paid", request)
            return JSONResponse(
                {"secret": "the paid content", "payer": request.state.payment.payer}
            )

        async def other(request: Request) -> JSONResponse:
            self._hit("other", request)
            return JSONResponse({"secret": "other paid content"})

        async def boom(request: Request) -> JSONResponse:
            self._hit("boom", request)
            raise RuntimeError("handler failed")

        async def error(request: Request) -> JSONResponse:
            self._hit("error", request)
            return JSONResponse({"error": "upstream down"}, status_code=503)

        async def before(request: Request) -> JSONResponse:
            self._hit("before", request)
            return JSONResponse({"tx": request.state.payment.transaction})

        async def free(request: Request) -> JSONResponse:
            return JSONResponse({"free": True})

        app = Starlette(
            routes=[
                StarletteRoute("/paid", paid),
                StarletteRoute("/other", other),
                StarletteRoute("/boom", boom),
                StarletteRoute("/error", error),
                StarletteRoute("/before", before),
                StarletteRoute("/free", free),
            ]
        )
        return PaymentMiddleware(
            app,
            gate=gate,
            routes={
                "GET /paid": "$0.01",
                "GET /other": "$0.01",
                "GET /boom": "$0.01",
                "GET /error": "$0.01",
                "GET /before": gate.route("$0.01", settlement="before"),
            },
        )


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


def make_gate(facilitator: Any, token: Any, pay_to: str, tmp_path: Any, **kw: Any) -> PaymentGate:
    return PaymentGate(
        pay_to=pay_to,
        assets=token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        **kw,
    )


@pytest.fixture
def gate(
    facilitator: LocalFacilitator, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = make_gate(facilitator, test_token, pay_to, tmp_path)
    yield g
    g.close()


@pytest.fixture
def shop() -> Shop:
    return Shop()


def asgi_client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


async def challenge(app: Any, path: str = "/paid") -> PaymentRequirements:
    async with asgi_client(app) as client:
        response = await client.get(path)
    assert response.status_code == 402
    required = decode_payment_required(response.headers["payment-required"])
    return required.accepts[0]


async def test_unpaid_request_gets_a_402_the_official_client_can_pay(
    gate: PaymentGate, shop: Shop, test_token: Any, pay_to: str
) -> None:
    app = shop.app(gate)
    async with asgi_client(app) as client:
        response = await client.get("/paid")
        free = await client.get("/free")
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
    required = decode_payment_required(response.headers["payment-required"])
    assert required.x402_version == 2
    assert required.resource is not None and required.resource.url == "http://shop.test/paid"
    (req,) = required.accepts
    assert (req.scheme, req.network, req.amount) == ("exact", "eip155:31337", str(PRICE))
    assert req.asset == test_token.address and req.pay_to == pay_to
    assert req.extra == {"name": "USD Coin", "version": "2"}
    body = response.json()
    assert body["error"] == "payment_required" and body["accepts"][0]["amount"] == str(PRICE)
    assert shop.calls == {}
    assert free.status_code == 200


async def test_paid_request_is_served_and_moves_exactly_the_price(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = shop.app(gate)
    payer_before, payee_before = test_token.balance_of(payer.address), test_token.balance_of(pay_to)
    async with paying_httpx_client(
        payer, asset=test_token, base_url="http://shop.test", transport=httpx.ASGITransport(app=app)
    ) as client:
        response = await client.get("/paid")
    assert response.status_code == 200, response.text
    assert response.json() == {"secret": "the paid content", "payer": payer.address}
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.payer == payer.address and receipt.network == chain.network
    tx = chain.w3.eth.get_transaction_receipt(receipt.transaction)
    assert tx["status"] == 1
    assert test_token.balance_of(payer.address) == payer_before - PRICE
    assert test_token.balance_of(pay_to) == payee_before + PRICE
    assert shop.calls == {"paid": 1}
    assert shop.payments[0].amount == PRICE and shop.payments[0].payer == payer.address
    assert "private" in response.headers["cache-control"]


def _header(payload: Any) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_payment(payload)}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BuildHeader = Callable[[Any, PaymentRequirements], dict[str, str]]

BAD_PAYMENTS: dict[str, tuple[BuildHeader, int, str]] = {
    # name: (how to build the header from (payer, requirements), expected status, expected code)
    "amount_in_terms": (
        lambda p, r: _header(
            sign_exact_payment(
                p, r, value=PRICE // 2, accepted=r.model_copy(update={"amount": str(PRICE // 2)})
            )
        ),
        402,
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ),
    "amount_signed": (
        lambda p, r: _header(sign_exact_payment(p, r, value=PRICE // 2)),
        402,
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ),
    "recipient": (
        lambda p, r: _header(sign_exact_payment(p, r, to=Account.create().address)),
        402,
        "invalid_exact_evm_payload_recipient_mismatch",
    ),
    "recipient_in_terms": (
        lambda p, r: _header(
            sign_exact_payment(
                p, r, accepted=r.model_copy(update={"pay_to": Account.create().address})
            )
        ),
        402,
        "invalid_exact_evm_payload_recipient_mismatch",
    ),
    "network": (
        lambda p, r: _header(
            sign_exact_payment(p, r, accepted=r.model_copy(update={"network": "eip155:8453"}))
        ),
        402,
        "network_mismatch",
    ),
    "asset": (
        lambda p, r: _header(
            sign_exact_payment(
                p, r, accepted=r.model_copy(update={"asset": Account.create().address})
            )
        ),
        402,
        "asset_mismatch",
    ),
    "timeout_terms": (
        lambda p, r: _header(
            sign_exact_payment(p, r, accepted=r.model_copy(update={"max_timeout_seconds": 999}))
        ),
        402,
        "max_timeout_mismatch",
    ),
    "extra_terms": (
        lambda p, r: _header(
            sign_exact_payment(
                p, r, accepted=r.model_copy(update={"extra": {"name": "USDC", "version": "2"}})
            )
        ),
        402,
        "extra_mismatch",
    ),
    "expired": (
        lambda p, r: _header(sign_exact_payment(p, r, valid_before=int(time.time()) - 10)),
        402,
        "invalid_exact_evm_payload_authorization_valid_before",
    ),
    "not_yet_valid": (
        lambda p, r: _header(sign_exact_payment(p, r, valid_after=int(time.time()) + 600)),
        402,
        "invalid_exact_evm_payload_authorization_valid_after",
    ),
    "wrong_domain_signature": (
        lambda p, r: _header(sign_exact_payment(p, r, domain_name="USDC")),
        402,
        "invalid_exact_evm_payload_signature",
    ),
    "wrong_chain_signature": (
        lambda p, r: _header(sign_exact_payment(p, r, chain_id=8453)),
        402,
        "invalid_exact_evm_payload_signature",
    ),
    "signature_of_someone_else": (
        lambda p, r: _header(
            sign_exact_payment(Account.create(), r).model_copy(
                update={
                    "payload": _swap_from(
                        sign_exact_payment(Account.create(), r).payload, p.address
                    )
                }
            )
        ),
        402,
        "invalid_exact_evm_payload_signature",
    ),
    "malformed_base64": (
        lambda p, r: {"PAYMENT-SIGNATURE": "%%%not-base64%%%"},
        400,
        "invalid_payment_header",
    ),
    "malformed_json": (
        lambda p, r: {"PAYMENT-SIGNATURE": _b64("{not json")},
        400,
        "invalid_payment_header",
    ),
    "json_not_object": (
        lambda p, r: {"PAYMENT-SIGNATURE": _b64("[1,2]")},
        400,
        "invalid_payment_header",
    ),
    "missing_accepted": (
        lambda p, r: {"PAYMENT-SIGNATURE": _b64(json.dumps({"x402Version": 2, "payload": {}}))},
        400,
        "invalid_payment_header",
    ),
    "unknown_version": (
        lambda p, r: {"PAYMENT-SIGNATURE": _b64(json.dumps({"x402Version": 7}))},
        400,
        "invalid_payment_header",
    ),
}


def _swap_from(payload: dict[str, Any], new_from: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(payload))
    out["authorization"]["from"] = new_from
    return out


@pytest.mark.parametrize("case", sorted(BAD_PAYMENTS))
async def test_bad_payments_are_refused_with_their_own_code_and_nothing_happens(
    case: str,
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    app = shop.app(gate)
    requirements = await challenge(app)
    build, status, code = BAD_PAYMENTS[case]
    headers = build(payer, requirements)
    block = chain.block_number()
    facilitator_nonce = chain.tx_count(facilitator.address)
    async with asgi_client(app) as client:
        response = await client.get("/paid", headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert "payment-required" in response.headers  # the client learns the right terms
    assert shop.calls == {}
    assert chain.tx_count(facilitator.address) == facilitator_nonce
    assert chain.block_number() == block
    assert test_token.balance_of(pay_to) == 0


async def test_replay_of_a_settled_payment_is_refused_without_a_transaction(
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    app = shop.app(gate)
    payload = sign_exact_payment(payer, await challenge(app))
    async with asgi_client(app) as client:
        first = await client.get("/paid", headers=_header(payload))
        assert first.status_code == 200
        sent = chain.tx_count(facilitator.address)
        replay = await client.get("/paid", headers=_header(payload))
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "the paid content" not in replay.text
    assert chain.tx_count(facilitator.address) == sent == 1
    assert shop.calls == {"paid": 1}
    assert test_token.balance_of(pay_to) == PRICE


async def test_twenty_concurrent_submissions_of_one_payment_run_the_handler_once(
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    app = shop.app(gate)
    payload = sign_exact_payment(payer, await challenge(app))
    headers = _header(payload)
    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get("/paid", headers=headers) for _ in range(20))
            )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [402] * 19
    refusals = {r.json()["error"] for r in responses if r.status_code == 402}
    assert refusals == {"invalid_exact_evm_nonce_already_used"}
    assert shop.calls == {"paid": 1}
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize("path", ["/boom", "/error"])
async def test_failed_handler_charges_nothing_and_the_payment_cannot_buy_another_route(
    path: str,
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    app = shop.app(gate)
    payload = sign_exact_payment(payer, await challenge(app, path))
    async with asgi_client(app) as client:
        failed = await client.get(path, headers=_header(payload))
        assert failed.status_code in (500, 503)
        assert "payment-response" not in failed.headers
        elsewhere = await client.get("/other", headers=_header(payload))
    assert elsewhere.status_code == 402
    assert elsewhere.json()["error"] == "payment_bound_to_other_resource"
    assert shop.calls == {path.strip("/"): 1}
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0
    assert (
        test_token.authorization_state(payer.address, payload.payload["authorization"]["nonce"])
        is False
    )


async def test_after_a_failed_handler_the_same_payment_can_retry_the_same_route(
    gate: PaymentGate, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    attempts = 0

    async def flaky(request: Request) -> JSONResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return JSONResponse({"error": "try again"}, status_code=503)
        return JSONResponse({"ok": True})

    app = PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/flaky", flaky)]),
        gate=gate,
        routes={"GET /flaky": "$0.01"},
    )
    payload = sign_exact_payment(payer, await challenge(app, "/flaky"))
    async with asgi_client(app) as client:
        first = await client.get("/flaky", headers=_header(payload))
        second = await client.get("/flaky", headers=_header(payload))
    assert (first.status_code, second.status_code) == (503, 200)
    assert test_token.balance_of(pay_to) == PRICE


async def test_before_policy_settles_before_the_handler_runs(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = shop.app(gate)
    async with paying_httpx_client(
        payer, asset=test_token, base_url="http://shop.test", transport=httpx.ASGITransport(app=app)
    ) as client:
        response = await client.get("/before")
    assert response.status_code == 200
    tx = response.json()["tx"]
    assert tx and chain.w3.eth.get_transaction_receipt(tx)["status"] == 1
    assert decode_payment_response_header(response.headers["payment-response"]).transaction == tx
    assert test_token.balance_of(pay_to) == PRICE


async def test_v1_x_payment_header_is_accepted_and_answered_with_x_payment_response(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = shop.app(gate)
    requirements = await challenge(app)
    v2 = sign_exact_payment(payer, requirements)
    v1 = {
        "x402Version": 1,
        "scheme": "exact",
        "network": requirements.network,
        "payload": v2.payload,
    }
    async with asgi_client(app) as client:
        response = await client.get("/paid", headers={"X-PAYMENT": _b64(json.dumps(v1))})
    assert response.status_code == 200, response.text
    assert decode_payment_response_header(response.headers["x-payment-response"]).success
    assert test_token.balance_of(pay_to) == PRICE


# -- facilitator faults, through a real facilitator HTTP service -------------------------------


@pytest.fixture
def facilitator_service(facilitator: LocalFacilitator) -> Iterator[FacilitatorServer]:
    with FacilitatorServer(facilitator, hang_seconds=3) as server:
        yield server


@pytest.fixture
async def http_gate(
    facilitator_service: FacilitatorServer, test_token: Any, pay_to: str, tmp_path: Any
) -> AsyncIterator[PaymentGate]:
    g = make_gate(
        HTTPFacilitator(facilitator_service.url, timeout=1.0), test_token, pay_to, tmp_path
    )
    yield g
    await g.aclose()


async def test_paid_request_through_an_http_facilitator(
    http_gate: PaymentGate,
    shop: Shop,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_service: FacilitatorServer,
) -> None:
    app = shop.app(http_gate)
    async with paying_httpx_client(
        payer, asset=test_token, base_url="http://shop.test", transport=httpx.ASGITransport(app=app)
    ) as client:
        response = await client.get("/paid")
    assert response.status_code == 200
    assert facilitator_service.calls["verify"] == 1 and facilitator_service.calls["settle"] == 1
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("500", 502, "facilitator_error"),
        ("malformed", 502, "facilitator_error"),
        ("drop", 503, "facilitator_unavailable"),
        ("timeout", 503, "facilitator_unavailable"),
    ],
)
async def test_facilitator_fault_at_verify_serves_nothing(
    fault: str,
    status: int,
    code: str,
    http_gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_service: FacilitatorServer,
) -> None:
    app = shop.app(http_gate)
    payload = sign_exact_payment(payer, await challenge(app))
    async with asgi_client(app) as client:
        with facilitator_service.fault("verify", fault):
            response = await client.get("/paid", headers=_header(payload))
        assert response.status_code == status and response.json()["error"] == code
        assert "the paid content" not in response.text
        assert shop.calls == {}
        # the fault clears: the same payment now goes through (verify has no side effects)
        recovered = await client.get("/paid", headers=_header(payload))
    assert recovered.status_code == 200
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("500", 502, "facilitator_error"),
        ("malformed", 502, "facilitator_error"),
        ("drop", 503, "facilitator_unavailable"),
        ("timeout", 503, "facilitator_unavailable"),
        ("pending", 503, "settlement_pending"),
    ],
)
async def test_facilitator_fault_at_settle_serves_nothing_and_never_settles_twice(
    fault: str,
    status: int,
    code: str,
    http_gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_service: FacilitatorServer,
    facilitator: LocalFacilitator,
) -> None:
    app = shop.app(http_gate)
    payload = sign_exact_payment(payer, await challenge(app))
    async with asgi_client(app) as client:
        with facilitator_service.fault("settle", fault):
            response = await client.get("/paid", headers=_header(payload))
        assert response.status_code == status and response.json()["error"] == code
        assert "the paid content" not in response.text
        # outcome unknown: the same authorization is held, so it can never be settled twice
        again = await client.get("/paid", headers=_header(payload))
        assert again.status_code == 402
        assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
        # a fresh payment works once the fault has cleared
        fresh = await client.get(
            "/paid", headers=_header(sign_exact_payment(payer, await challenge(app)))
        )
    assert fresh.status_code == 200
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


async def test_unreachable_facilitator_is_a_503_not_a_402(
    shop: Shop, test_token: Any, payer: Any, pay_to: str, tmp_path: Any
) -> None:
    gate = make_gate(
        HTTPFacilitator("http://127.0.0.1:9", timeout=1.0), test_token, pay_to, tmp_path
    )
    app = shop.app(gate)
    async with asgi_client(app) as client:
        response = await client.get("/paid")
    assert response.status_code == 503
    assert response.json()["error"] == "facilitator_unavailable"
    assert "127.0.0.1" not in response.text
    assert shop.calls == {}
    await gate.aclose()


async def test_verify_fails_over_to_the_next_facilitator_but_settle_never_does(
    shop: Shop,
    facilitator_service: FacilitatorServer,
    test_token: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    failover = HTTPFacilitator([facilitator_service.url, dead], timeout=1.0)
    gate = make_gate(failover, test_token, pay_to, tmp_path)
    app = shop.app(gate)
    payload = sign_exact_payment(payer, await challenge(app))
    async with asgi_client(app) as client:
        # the first URL is unreachable for verify: the second one answers
        with facilitator_service.fault("verify", "drop"):
            pass
        failover.urls.reverse()  # now [dead, live]: verify must skip the dead one...
        response = await client.get("/paid", headers=_header(payload))
    # ...but settle goes to the first URL only, which is dead: no content, 503, nothing settled
    assert response.status_code == 503 and response.json()["error"] == "facilitator_unavailable"
    assert facilitator_service.calls["verify"] == 1 and facilitator_service.calls["settle"] == 0
    assert test_token.balance_of(pay_to) == 0
    await gate.aclose()


async def test_blocking_chain_calls_never_run_on_the_event_loop(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The facilitator talks to the chain through blocking JSON-RPC calls; they must all happen
    # in worker threads. Record the thread of every call the chain transport posts.
    import json
    import threading

    from x402gate._rpc import JsonRpcTransport

    threads: list[int] = []
    methods: list[str] = []
    original = JsonRpcTransport._exchange

    def recording_post(self: Any, body: bytes, sending: bool) -> Any:
        # Every post goes through here: web3's calls, x402gate's own and JSON-RPC batches.
        threads.append(threading.get_ident())
        calls = json.loads(body)
        methods.extend(c["method"] for c in (calls if isinstance(calls, list) else [calls]))
        return original(self, body, sending)

    monkeypatch.setattr(JsonRpcTransport, "_exchange", recording_post)
    loop_thread = threading.get_ident()
    app = shop.app(gate)
    async with paying_httpx_client(
        payer, asset=test_token, base_url="http://shop.test", transport=httpx.ASGITransport(app=app)
    ) as client:
        assert (await client.get("/paid")).status_code == 200
    assert {"eth_call", "eth_sendRawTransaction", "eth_getTransactionReceipt"} <= set(methods)
    assert loop_thread not in threads


async def test_a_route_can_accept_several_assets_and_networks(
    facilitator: LocalFacilitator,
    test_token: Any,
    chain: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    # Two tokens with different EIP-712 domains on one chain (several networks per route are
    # covered by test_protocol; a facilitator here supports only the local chain).
    second = chain.deploy_token(name="USDC", symbol="USDC", version="2")
    gate = PaymentGate(
        pay_to=pay_to,
        assets=[test_token.asset, second.asset],
        facilitator=facilitator,
        store="memory://",
    )
    app = PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/x", lambda r: JSONResponse({"ok": True}))]),
        gate=gate,
        routes={"GET /x": "$0.02"},
    )
    async with asgi_client(app) as client:
        response = await client.get("/x")
    accepts = decode_payment_required(response.headers["payment-required"]).accepts
    assert [(a.network, a.asset, a.amount, a.extra["name"]) for a in accepts] == [
        ("eip155:31337", test_token.address, "20000", "USD Coin"),
        ("eip155:31337", second.address, "20000", "USDC"),
    ]
    second.mint(payer.address, 1_000_000)
    payload = sign_exact_payment(payer, accepts[1])  # pay with the second token
    async with asgi_client(app) as client:
        paid = await client.get("/x", headers=_header(payload))
    assert paid.status_code == 200
    assert second.balance_of(pay_to) == 20_000 and test_token.balance_of(pay_to) == 0


async def test_with_policy_before_a_failing_handler_still_gets_the_receipt(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    async def fails(request: Request) -> JSONResponse:
        return JSONResponse({"error": "down"}, status_code=503)

    app = PaymentMiddleware(
        Starlette(routes=[StarletteRoute("/x", fails)]),
        gate=gate,
        routes={"GET /x": gate.route("$0.01", settlement="before")},
    )
    payload = sign_exact_payment(payer, await challenge(app, "/x"))
    async with asgi_client(app) as client:
        response = await client.get("/x", headers=_header(payload))
    # The money moved before the handler ran: the client must be able to see where it went.
    assert response.status_code == 503
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert test_token.balance_of(pay_to) == PRICE
