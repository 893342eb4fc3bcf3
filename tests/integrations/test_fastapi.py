"""The FastAPI integration on a real chain, served by uvicorn, paid by the official x402 client.

What is checked is what an API owner and their clients would check: the 402 an official client
can pay, the ``Payment`` the endpoint receives, the receipt and balances on chain, that nothing
is charged when the endpoint fails, that not one byte of content leaves before settlement, and
what the OpenAPI document tells a client about paid operations.
"""

import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from x402.http import decode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from x402gate import ConfigurationError, LocalFacilitator, Payment, PaymentGate
from x402gate.demo import serve_in_thread
from x402gate.facilitators import HTTPFacilitator
from x402gate.fastapi import install, require_payment
from x402gate.request import RequestInfo
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01 in USDC atomic units
CHUNKS = [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]


class Recording:
    """Delegates to a real facilitator, notes when settlement happens, can refuse to settle."""

    def __init__(self, inner: Any, events: list[str]) -> None:
        self.inner = inner
        self.events = events
        self.refuse_with: str | None = None

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        self.events.append("settle")
        if self.refuse_with:
            return SettleResponse(
                success=False,
                error_reason=self.refuse_with,
                transaction="",
                network=requirements.network,
            )
        return await self.inner.settle(payload, requirements)


def price_by_length(request: RequestInfo) -> str:
    # $0.001 per started 100 characters: read from the JSON body the endpoint also parses.
    return f"${(len((request.json() or {}).get('text', '')) // 100 + 1) / 1000:.3f}"


class Text(BaseModel):
    text: str


def payment_fields(payment: Payment) -> dict[str, Any]:
    return {
        "payer": payment.payer,
        "amount": payment.amount,
        "network": payment.network,
        "transaction": payment.transaction,
    }


def build_app(gate: PaymentGate, events: list[str], **options: Any) -> tuple[FastAPI, Counter[str]]:
    """A paid API covering each way an endpoint can be paid for and can answer."""
    runs: Counter[str] = Counter()
    app = FastAPI(title="shop")
    install(app, gate, **options)
    paid = require_payment("$0.01", description="The paid thing")
    before = require_payment("$0.01", settlement="before")
    by_length = require_payment(price_by_length)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            events.append(chunk.decode().strip())
            yield chunk

    @app.get("/paid")
    async def paid_endpoint(payment: Annotated[Payment, Depends(paid)]) -> dict[str, Any]:
        runs["paid"] += 1
        events.append("endpoint")
        return {"content": "PAID-CONTENT", **payment_fields(payment)}

    @app.get("/sync")
    def sync_endpoint(payment: Annotated[Payment, Depends(paid)]) -> dict[str, Any]:
        runs["sync"] += 1
        return {"content": "SYNC-CONTENT", **payment_fields(payment)}

    @app.post("/summarize")
    async def summarize(
        body: Text, payment: Annotated[Payment, Depends(by_length)]
    ) -> dict[str, Any]:
        runs["summarize"] += 1
        return {"summary": body.text[:10], "amount": payment.amount}

    @app.get("/boom", dependencies=[Depends(paid)])
    async def boom() -> None:
        runs["boom"] += 1
        raise RuntimeError("boom")

    @app.get("/error", dependencies=[Depends(paid)])
    async def error() -> JSONResponse:
        runs["error"] += 1
        return JSONResponse({"error": "down", "content": "PAID-CONTENT"}, status_code=503)

    @app.get("/missing", dependencies=[Depends(paid)])
    async def missing() -> None:
        runs["missing"] += 1
        raise HTTPException(404, "no such thing")

    @app.get("/flaky", dependencies=[Depends(paid)])
    async def flaky() -> dict[str, str]:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise RuntimeError("first call fails")
        return {"content": "PAID-CONTENT"}

    @app.get("/stream-before")
    async def stream_before(payment: Annotated[Payment, Depends(before)]) -> StreamingResponse:
        runs["stream-before"] += 1
        events.append(f"endpoint tx={payment.transaction is not None}")
        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/stream-after", dependencies=[Depends(paid)])
    async def stream_after() -> StreamingResponse:
        runs["stream-after"] += 1
        events.append("endpoint")
        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/free", response_class=PlainTextResponse)
    async def free() -> str:
        runs["free"] += 1
        return "free"

    router = APIRouter(prefix="/v1", dependencies=[Depends(paid)])

    @router.get("/a")
    async def v1_a() -> dict[str, str]:
        runs["v1/a"] += 1
        return {"content": "A"}

    @router.get("/b")
    async def v1_b(payment: Annotated[Payment, Depends(paid)]) -> dict[str, Any]:
        # the router's dependency again: FastAPI's cache makes it one payment, not two
        runs["v1/b"] += 1
        return {"content": "B", "payer": payment.payer}

    app.include_router(router)
    return app, runs


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def recording(facilitator: LocalFacilitator, events: list[str]) -> Recording:
    return Recording(facilitator, events)


def make_gate(facilitator: Any, token: Any, pay_to: str, tmp_path: Any) -> PaymentGate:
    return PaymentGate(
        pay_to=pay_to,
        assets=token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )


@pytest.fixture
def gate(
    recording: Recording, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = make_gate(recording, test_token, pay_to, tmp_path)
    yield g
    g.close()


@pytest.fixture
def shop(gate: PaymentGate, events: list[str]) -> tuple[FastAPI, Counter[str]]:
    return build_app(gate, events, discovery=True)


@pytest.fixture
def served(shop: tuple[FastAPI, Counter[str]]) -> Iterator[str]:
    with serve_in_thread(shop[0]) as base_url:
        yield base_url


async def challenge(base_url: str, path: str = "/paid") -> PaymentRequirements:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get(path)
    assert response.status_code == 402, response.text
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


def header(payer: Any, requirements: PaymentRequirements) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_payment(sign_exact_payment(payer, requirements))}


# -- the paid flow, on uvicorn --------------------------------------------------------------------


async def test_unpaid_request_gets_a_402_the_official_client_understands(
    served: str, shop: tuple[FastAPI, Counter[str]], test_token: Any, pay_to: str
) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        response = await client.get("/paid")
        free = await client.get("/free")
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None and required.resource.url == f"{served}/paid"
    assert required.resource.description == "The paid thing"
    (terms,) = required.accepts
    assert (terms.scheme, terms.amount, terms.asset, terms.pay_to) == (
        "exact",
        str(PRICE),
        test_token.address,
        pay_to,
    )
    assert response.json()["error"] == "payment_required"
    assert (free.status_code, free.text) == (200, "free")
    assert shop[1] == {"free": 1}


@pytest.mark.parametrize("path", ["/paid", "/sync"])
async def test_paid_request_gets_the_content_the_payment_and_a_receipt(
    path: str,
    served: str,
    shop: tuple[FastAPI, Counter[str]],
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    before = test_token.balance_of(payer.address)
    async with paying_httpx_client(payer, asset=test_token, base_url=served) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    body = response.json()
    # the dependency's value: who paid, how much, where; settled only after the endpoint
    assert body["payer"] == payer.address and body["amount"] == PRICE
    assert body["network"] == chain.network and body["transaction"] is None
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.payer == payer.address
    assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    assert "private" in response.headers["cache-control"]
    assert test_token.balance_of(payer.address) == before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert shop[1] == {path.strip("/"): 1}


async def test_price_computed_from_the_body_the_endpoint_also_reads(
    served: str, test_token: Any, payer: Any, pay_to: str
) -> None:
    async with paying_httpx_client(payer, asset=test_token, base_url=served) as client:
        response = await client.post("/summarize", json={"text": "x" * 250})
    assert response.status_code == 200, response.text
    assert response.json() == {"summary": "x" * 10, "amount": 3_000}
    assert test_token.balance_of(pay_to) == 3_000


async def test_router_dependency_charges_each_route_of_the_router_once(
    served: str, shop: tuple[FastAPI, Counter[str]], test_token: Any, payer: Any, pay_to: str
) -> None:
    async with httpx.AsyncClient(base_url=served) as raw:
        assert (await raw.get("/v1/a")).status_code == 402
    async with paying_httpx_client(payer, asset=test_token, base_url=served) as client:
        a = await client.get("/v1/a")
        b = await client.get("/v1/b")
    assert (a.status_code, b.status_code) == (200, 200), b.text
    assert b.json() == {"content": "B", "payer": payer.address}
    assert test_token.balance_of(pay_to) == 2 * PRICE
    assert shop[1] == {"v1/a": 1, "v1/b": 1}


async def test_app_dependency_charges_every_operation_but_not_docs_or_discovery(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = FastAPI(dependencies=[Depends(require_payment("$0.01"))])
    install(app, gate, discovery=True)

    @app.get("/anything")
    async def anything() -> dict[str, str]:
        return {"content": "PAID-CONTENT"}

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as raw:
            unpaid = await raw.get("/anything")
            docs = [await raw.get(p) for p in ("/openapi.json", "/docs", "/.well-known/x402")]
        async with paying_httpx_client(payer, asset=test_token, base_url=base_url) as client:
            paid = await client.get("/anything")
    assert unpaid.status_code == 402 and "PAID-CONTENT" not in unpaid.text
    assert [r.status_code for r in docs] == [200, 200, 200]
    assert "402" in docs[0].json()["paths"]["/anything"]["get"]["responses"]
    assert paid.status_code == 200 and paid.json() == {"content": "PAID-CONTENT"}
    assert test_token.balance_of(pay_to) == PRICE


async def test_replayed_payment_is_refused_without_a_second_transaction(
    served: str,
    shop: tuple[FastAPI, Counter[str]],
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    headers = header(payer, await challenge(served))
    async with httpx.AsyncClient(base_url=served) as client:
        first = await client.get("/paid", headers=headers)
        replay = await client.get("/paid", headers=headers)
    assert first.status_code == 200
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "PAID-CONTENT" not in replay.text
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE
    assert shop[1] == {"paid": 1}


# -- nothing charged when the endpoint fails ------------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/boom", 500), ("/error", 503), ("/missing", 404)])
async def test_failing_endpoint_charges_nothing(
    path: str,
    status: int,
    served: str,
    shop: tuple[FastAPI, Counter[str]],
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
    events: list[str],
) -> None:
    requirements = await challenge(served, path)
    payload = sign_exact_payment(payer, requirements)
    async with httpx.AsyncClient(base_url=served) as client:
        response = await client.get(path, headers={"PAYMENT-SIGNATURE": encode_payment(payload)})
    assert response.status_code == status
    assert "payment-response" not in response.headers
    assert shop[1] == {path.strip("/"): 1}
    assert "settle" not in events
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0
    nonce = payload.payload["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce) is False


async def test_after_an_endpoint_exception_the_same_payment_can_retry(
    served: str, shop: tuple[FastAPI, Counter[str]], test_token: Any, payer: Any, pay_to: str
) -> None:
    headers = header(payer, await challenge(served, "/flaky"))
    # uvicorn closes the connection after an application exception: no keep-alive here
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=served, limits=no_reuse) as client:
        first = await client.get("/flaky", headers=headers)
        second = await client.get("/flaky", headers=headers)
    # the exception released the claim: the retry is served and charged exactly once
    assert (first.status_code, second.status_code) == (500, 200)
    assert test_token.balance_of(pay_to) == PRICE
    assert shop[1] == {"flaky": 2}


# -- settlement before any byte of content --------------------------------------------------------


@pytest.mark.parametrize("path", ["/paid", "/stream-after"])
async def test_refused_settlement_gives_the_402_and_none_of_the_content(
    path: str,
    served: str,
    shop: tuple[FastAPI, Counter[str]],
    recording: Recording,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    headers = header(payer, await challenge(served, path))
    recording.refuse_with = "insufficient_funds"
    async with httpx.AsyncClient(base_url=served) as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == 402
    assert response.json()["error"] == "insufficient_funds"
    assert "PAID-CONTENT" not in response.text and "chunk-" not in response.text
    assert not decode_payment_response_header(response.headers["payment-response"]).success
    assert shop[1] == {path.strip("/"): 1}  # the endpoint ran; its answer never left
    assert test_token.balance_of(pay_to) == 0


async def test_facilitator_failure_at_settlement_is_a_502_with_none_of_the_content(
    facilitator: LocalFacilitator,
    events: list[str],
    test_token: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    with FacilitatorServer(facilitator) as service:
        gate = make_gate(HTTPFacilitator(service.url, timeout=2.0), test_token, pay_to, tmp_path)
        app, runs = build_app(gate, events)
        with serve_in_thread(app) as base_url:
            headers = header(payer, await challenge(base_url))
            async with httpx.AsyncClient(base_url=base_url) as client:
                with service.fault("settle", "500"):
                    response = await client.get("/paid", headers=headers)
                again = await client.get("/paid", headers=headers)
        gate.close()
    assert response.status_code == 502 and response.json()["error"] == "facilitator_error"
    assert "PAID-CONTENT" not in response.text
    # outcome unknown: the authorization stays held, so it can never be settled twice
    assert again.status_code == 402
    assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert runs == {"paid": 1}
    assert test_token.balance_of(pay_to) == 0


async def test_stream_with_settlement_before_is_settled_before_the_endpoint_runs(
    served: str, events: list[str], test_token: Any, payer: Any, pay_to: str
) -> None:
    async with paying_httpx_client(payer, asset=test_token, base_url=served) as client:
        response = await client.get("/stream-before")
    assert response.status_code == 200
    assert response.content == b"".join(CHUNKS)
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert events == ["settle", "endpoint tx=True", "chunk-0", "chunk-1", "chunk-2"]
    assert test_token.balance_of(pay_to) == PRICE


async def test_stream_with_settlement_after_is_settled_before_its_first_chunk(
    served: str, events: list[str], test_token: Any, payer: Any, pay_to: str
) -> None:
    async with paying_httpx_client(payer, asset=test_token, base_url=served) as client:
        response = await client.get("/stream-after")
    assert response.status_code == 200
    assert response.content == b"".join(CHUNKS)
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert events == ["endpoint", "settle", "chunk-0", "chunk-1", "chunk-2"]
    assert test_token.balance_of(pay_to) == PRICE


# -- fail closed ----------------------------------------------------------------------------------


def unprotected_app(gate: PaymentGate, runs: Counter[str], *, explicit_gate: bool) -> FastAPI:
    app = FastAPI()  # install() forgotten

    paid_dependency = require_payment("$0.01", gate=gate if explicit_gate else None)

    @app.get("/paid")
    async def paid(payment: Annotated[Payment, Depends(paid_dependency)]) -> dict[str, str]:
        runs["paid"] += 1
        return {"content": "PAID-CONTENT"}

    return app


@pytest.mark.parametrize("explicit_gate", [True, False])
async def test_without_the_settlement_layer_nothing_is_served_or_charged(
    explicit_gate: bool,
    gate: PaymentGate,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    runs: Counter[str] = Counter()
    app = unprotected_app(gate, runs, explicit_gate=explicit_gate)
    terms = (await gate.requirements(gate.route("$0.01"), RequestInfo("GET", "/paid")))[0]
    headers = header(payer, terms)
    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/paid", headers=headers)
    assert response.status_code == 500
    assert "PAID-CONTENT" not in response.text
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        with pytest.raises(ConfigurationError, match=r"install\(app, gate\)"):
            await client.get("/paid", headers=headers)
    assert runs == {}
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0


async def test_two_different_paid_dependencies_on_one_route_are_refused(
    gate: PaymentGate,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    app = FastAPI(dependencies=[Depends(require_payment("$0.01"))])
    install(app, gate)

    @app.get("/double", dependencies=[Depends(require_payment("$0.02"))])
    async def double() -> str:
        return "PAID-CONTENT"

    with serve_in_thread(app) as base_url:
        headers = header(payer, await challenge(base_url, "/double"))
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/double", headers=headers)
    assert response.status_code == 500 and "PAID-CONTENT" not in response.text
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0


def test_configuration_mistakes_fail_where_the_app_is_defined(gate: PaymentGate) -> None:
    with pytest.raises(ConfigurationError):
        require_payment("-$1")
    with pytest.raises(ConfigurationError, match="settlement"):
        require_payment("$0.01", settlement="later")  # type: ignore[arg-type]
    app = FastAPI()
    install(app, gate)
    with pytest.raises(ConfigurationError, match="already installed"):
        install(app, gate)


def test_importing_without_fastapi_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n    import x402gate.fastapi\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'x402gate[fastapi]'" in result.stdout


# -- what clients learn before paying -------------------------------------------------------------


async def test_openapi_documents_the_402_and_the_price_of_paid_operations_only(
    served: str, pay_to: str, test_token: Any
) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        first = (await client.get("/openapi.json")).json()
        schema = (await client.get("/openapi.json")).json()
    assert first == schema  # documenting is done once, not again on every request
    paths = schema["paths"]
    operation = paths["/paid"]["get"]
    refusal = operation["responses"]["402"]
    assert "$0.01" in refusal["description"] and "PAYMENT-REQUIRED" in refusal["headers"]
    (terms,) = refusal["content"]["application/json"]["example"]["accepts"]
    assert (terms["amount"], terms["payTo"]) == (str(PRICE), pay_to)
    assert terms["asset"] == test_token.address
    info = operation["x-payment-info"]
    assert info["price"]["price"] == "$0.01" and info["settlement"] == "after"
    assert operation["description"].count("$0.01 per call") == 1
    assert "PAYMENT-RESPONSE" in operation["responses"]["200"]["headers"]
    assert {"PAYMENT-SIGNATURE"} <= {p["name"] for p in operation["parameters"]}
    assert paths["/v1/a"]["get"]["x-payment-info"]["price"]["price"] == "$0.01"
    assert paths["/stream-before"]["get"]["x-payment-info"]["settlement"] == "before"
    dynamic = paths["/summarize"]["post"]
    assert dynamic["x-payment-info"]["price"] == {"type": "dynamic"}
    assert "computed from the request" in dynamic["responses"]["402"]["description"]
    free = paths["/free"]["get"]
    assert "402" not in free["responses"] and "x-payment-info" not in free


def test_a_custom_openapi_function_set_before_install_is_documented_too(
    gate: PaymentGate,
) -> None:
    app = FastAPI()

    def custom_openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = get_openapi(title="custom", version="1", routes=app.routes)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01"))])
    async def paid() -> str:
        return "PAID-CONTENT"

    schema = app.openapi()
    assert schema["info"]["title"] == "custom"
    assert "$0.01" in schema["paths"]["/paid"]["get"]["responses"]["402"]["description"]


async def test_discovery_lists_the_paid_operations(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        response = await client.get("/.well-known/x402")
    assert response.status_code == 200
    items = {
        (i["input"]["method"], i["input"]["routeTemplate"]): i for i in response.json()["items"]
    }
    assert {("GET", "/paid"), ("POST", "/summarize"), ("GET", "/v1/a")} <= set(items)
    assert ("GET", "/free") not in items
    assert items[("GET", "/paid")]["resource"]["url"] == f"{served}/paid"
    assert items[("GET", "/paid")]["price"]["display"] == "$0.01"


@pytest.mark.parametrize("trust", [True, False])
async def test_resource_url_follows_proxy_headers_only_when_trusted(
    trust: bool, gate: PaymentGate, events: list[str]
) -> None:
    from x402gate.proxies import TrustedProxies

    # The test client connects from loopback: trusted, it plays the reverse proxy.
    gate.trusted_proxies = TrustedProxies(["127.0.0.1"] if trust else [])
    app, _ = build_app(gate, events)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/paid", headers=forwarded)
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None
    # (uvicorn itself applies X-Forwarded-Proto from loopback peers; the host is x402gate's call)
    host = urlsplit(required.resource.url).netloc
    assert host == ("api.example.com" if trust else urlsplit(base_url).netloc)
    if trust:
        assert required.resource.url == "https://api.example.com/paid"


async def test_the_402_passes_through_cors_middleware_for_browsers(gate: PaymentGate) -> None:
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01"))])
    async def paid() -> str:
        return "PAID-CONTENT"

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/paid", headers={"Origin": "https://app.example"})
    assert response.status_code == 402
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
