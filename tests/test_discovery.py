"""Discovery metadata: the bazaar extension on 402 answers, and the ``/.well-known/x402`` document.

The 402 answers are produced by the real ASGI middleware (through ``httpx.ASGITransport``) with a
real :class:`~x402gate.HTTPFacilitator` talking to a local facilitator service that was given
secret credentials; the extension is then checked with the official SDK's bazaar validators and
read back the way a facilitator catalogues it (``extract_discovery_info``). No chain is needed:
nothing is paid here.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from x402.schemas import SupportedKind, SupportedResponse

from x402gate import HTTPFacilitator, MatchRules, PaymentGate, RequestInfo, Rule, usdc
from x402gate.asgi import PaymentMiddleware
from x402gate.discovery import WELL_KNOWN_PATH, bazaar_extension, discovery_document
from x402gate.routing import RouteTable
from x402gate.testing.facilitator_server import FacilitatorServer

# The SDK's bazaar module (validators, extract_discovery_info) needs x402's "extensions" extra.
NEEDS_JSONSCHEMA = "the official bazaar validators need jsonschema (pip install 'x402[extensions]')"

ASSET = usdc("base-sepolia")
PAY_TO = Account.create().address
OTHER_PAY_TO = Account.create().address
BASE_URL = "https://api.example.com"

# Credentials the server holds and must never publish: in the facilitator's URL and headers, and
# in a pricing rule (an API tier header) that only the server may know about.
API_KEY = "sk_live_facilitator_key_5f2b9c"
URL_TOKEN = "tenant-token-83a1d7"
SECRET_TIER = "internal-tier-c41e"

WEATHER_BAZAAR = bazaar_extension(
    method="GET",
    query_params={"city": "Lisbon"},
    output_example={"city": "Lisbon", "forecast": "sunny"},
    output_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "forecast": {"type": "string"}},
    },
)
CHAT_BAZAAR = bazaar_extension(
    method="POST", body_type="json", body={"model": "small-1", "prompt": "Hello"}
)


class OfflineFacilitator:
    """The backend of the local facilitator service: supports Base Sepolia, settles nothing."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("nothing is paid in these tests")

    settle = verify


def price_by_length(request: RequestInfo) -> str:
    text = str((request.json() or {}).get("text", ""))
    return f"${(len(text) // 100 + 1) / 1000:.3f}"


def route_table(gate: PaymentGate) -> dict[str, Any]:
    return {
        "GET /weather": gate.route(
            "$0.01",
            description="Today's weather in a city",
            mime_type="application/json",
            extensions=WEATHER_BAZAAR,
        ),
        "POST /v1/chat": gate.route(
            MatchRules(
                [
                    Rule("$0.02", {"body.model": "large-*"}),
                    Rule("$0.0001", {"header.x-api-tier": SECRET_TIER}),
                ],
                fallback="$0.002",
            ),
            description="One chat completion",
            extensions=CHAT_BAZAAR,
        ),
        "POST /summarize": gate.route(price_by_length, description="Summary, priced by length"),
        "GET,POST /reports/{id}": gate.route(
            "$0.05", pay_to=OTHER_PAY_TO, max_timeout_seconds=60, mime_type="text/csv"
        ),
    }


async def free(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"free"})


@pytest.fixture
def facilitator_service() -> Iterator[FacilitatorServer]:
    with FacilitatorServer(OfflineFacilitator()) as service:
        yield service


@pytest.fixture
async def gate(facilitator_service: FacilitatorServer) -> AsyncIterator[PaymentGate]:
    facilitator = HTTPFacilitator(
        f"{facilitator_service.url}/{URL_TOKEN}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    gate = PaymentGate(pay_to=PAY_TO, assets=ASSET, facilitator=facilitator, store="memory://")
    yield gate
    await gate.aclose()


@pytest.fixture
async def client(gate: PaymentGate) -> AsyncIterator[httpx.AsyncClient]:
    app = PaymentMiddleware(free, gate=gate, routes=route_table(gate), discovery=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


def decode_header(value: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(value))
    return decoded


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (API_KEY, URL_TOKEN, SECRET_TIER):
            assert secret not in text


# -- the bazaar extension on 402 answers --------------------------------------------------------


async def test_a_402_carries_the_bazaar_extension_in_header_and_body(
    client: httpx.AsyncClient, facilitator_service: FacilitatorServer
) -> None:
    response = await client.get("/weather", params={"city": "Lisbon"})

    assert response.status_code == 402
    header = decode_header(response.headers["payment-required"])
    body = response.json()
    for answer in (header, body):
        assert answer["extensions"]["bazaar"] == WEATHER_BAZAAR["bazaar"]
        assert answer["resource"] == {
            "url": f"{BASE_URL}/weather?city=Lisbon",
            "description": "Today's weather in a city",
            "mimeType": "application/json",
        }
    # The body is the header's content plus a human message, nothing else, except that Base
    # Sepolia has an x402 v1 name: the body's version and terms are v1's, for v1 clients.
    assert body["x402Version"] == 1 and [a["network"] for a in body["accepts"]] == ["base-sepolia"]
    assert body["accepts"][0]["maxAmountRequired"] == header["accepts"][0]["amount"]
    unchanged = {k: v for k, v in body.items() if k not in ("message", "x402Version", "accepts")}
    assert unchanged == {k: v for k, v in header.items() if k not in ("x402Version", "accepts")}
    # The gate did ask the (credentialed) facilitator before answering: its secrets stay inside.
    assert facilitator_service.calls["supported"] == 1
    assert_no_secret(response.text, json.dumps(dict(response.headers)))


async def test_the_extension_is_valid_for_the_official_bazaar_validators(
    client: httpx.AsyncClient,
) -> None:
    pytest.importorskip("jsonschema", reason=NEEDS_JSONSCHEMA)
    from x402.extensions.bazaar import (
        validate_discovery_extension,
        validate_discovery_extension_spec,
    )

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/weather", {}),
        ("POST", "/v1/chat", {"json": {"model": "small-1", "prompt": "Hello"}}),
    ]
    for method, path, kwargs in requests:
        response = await client.request(method, path, **kwargs)
        assert response.status_code == 402
        bazaar = decode_header(response.headers["payment-required"])["extensions"]["bazaar"]
        assert bazaar["info"]["input"]["method"] == method
        assert validate_discovery_extension(bazaar).valid, path
        assert validate_discovery_extension_spec(bazaar).valid, path
    assert bazaar["info"]["input"]["bodyType"] == "json"
    assert bazaar["info"]["input"]["body"] == {"model": "small-1", "prompt": "Hello"}


async def test_a_facilitator_catalogues_what_the_official_client_copied_from_the_402(
    client: httpx.AsyncClient,
) -> None:
    pytest.importorskip("jsonschema", reason=NEEDS_JSONSCHEMA)
    from x402.extensions.bazaar import QueryInput, extract_discovery_info
    from x402.schemas import PaymentPayload

    from x402gate.testing.clients import x402_client
    from x402gate.testing.payments import decode_payment_required

    response = await client.get("/weather", params={"city": "Lisbon"})
    required = decode_payment_required(response.headers["payment-required"])
    payload = await x402_client(Account.create(), asset=ASSET).create_payment_payload(required)
    assert isinstance(payload, PaymentPayload)  # a v2 challenge gets a v2 payload

    found = extract_discovery_info(payload, payload.accepted)

    assert found is not None
    assert (found.resource_url, found.method) == (f"{BASE_URL}/weather", "GET")
    assert (found.description, found.mime_type) == ("Today's weather in a city", "application/json")
    assert isinstance(found.discovery_info.input, QueryInput)
    assert found.discovery_info.input.query_params == {"city": "Lisbon"}


async def test_routes_without_extensions_declare_no_bazaar(client: httpx.AsyncClient) -> None:
    response = await client.post("/summarize", json={"text": "short"})

    assert response.status_code == 402
    extensions = decode_header(response.headers["payment-required"]).get("extensions") or {}
    assert "bazaar" not in extensions


def test_bazaar_extension_shapes() -> None:
    plain = bazaar_extension()["bazaar"]
    assert plain["info"] == {"input": {"type": "http", "method": "GET"}}
    assert plain["schema"]["properties"]["input"]["properties"]["method"] == {
        "type": "string",
        "enum": ["GET"],
    }
    assert "output" not in plain["schema"]["properties"]

    post = bazaar_extension(method="post", body_type="json")["bazaar"]
    assert post["info"]["input"] == {
        "type": "http",
        "method": "POST",
        "bodyType": "json",
        "body": {},
    }

    example_only = bazaar_extension(output_example={"ok": True})["bazaar"]
    assert example_only["info"]["output"] == {"type": "json", "example": {"ok": True}}


# -- the discovery document ---------------------------------------------------------------------


async def test_discovery_document_lists_every_route_and_method(gate: PaymentGate) -> None:
    stamp = dt.datetime(2025, 5, 1, 12, 30, 15, 999, tzinfo=dt.UTC)

    document = discovery_document(
        gate, RouteTable(gate, route_table(gate)), BASE_URL + "/", updated=stamp
    )

    assert document["x402Version"] == 2
    assert document["lastUpdated"] == "2025-05-01T12:30:15Z"
    items = {(i["input"]["method"], i["input"]["routeTemplate"]): i for i in document["items"]}
    assert list(items) == [
        ("GET", "/weather"),
        ("POST", "/v1/chat"),
        ("POST", "/summarize"),
        ("GET", "/reports/{id}"),
        ("POST", "/reports/{id}"),
    ]
    assert all(item["type"] == "http" for item in items.values())


async def test_a_flat_price_is_quoted_with_full_payment_terms(gate: PaymentGate) -> None:
    document = discovery_document(gate, RouteTable(gate, route_table(gate)), BASE_URL)
    weather = document["items"][0]

    assert weather["resource"] == {
        "url": f"{BASE_URL}/weather",
        "description": "Today's weather in a city",
        "mimeType": "application/json",
    }
    assert weather["price"] == {"type": "flat", "price": "$0.01", "display": "$0.01"}
    assert weather["accepts"] == [
        {
            "scheme": "exact",
            "network": "eip155:84532",
            "asset": ASSET.address,
            "amount": "10000",
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"},
        }
    ]


async def test_route_options_reach_the_document(gate: PaymentGate) -> None:
    document = discovery_document(gate, RouteTable(gate, route_table(gate)), BASE_URL)
    reports = [i for i in document["items"] if i["input"]["routeTemplate"] == "/reports/{id}"]

    assert [i["input"]["method"] for i in reports] == ["GET", "POST"]
    for item in reports:
        assert item["resource"] == {"url": f"{BASE_URL}/reports/{{id}}", "mimeType": "text/csv"}
        (accept,) = item["accepts"]
        assert (accept["amount"], accept["payTo"], accept["maxTimeoutSeconds"]) == (
            "50000",
            OTHER_PAY_TO,
            60,
        )


async def test_prices_computed_from_the_request_are_described_not_quoted(
    gate: PaymentGate,
) -> None:
    document = discovery_document(gate, RouteTable(gate, route_table(gate)), BASE_URL)
    items = {i["input"]["routeTemplate"]: i for i in document["items"]}

    summarize, chat = items["/summarize"], items["/v1/chat"]
    assert summarize["price"] == {"type": "dynamic"}
    assert chat["price"] == {
        "type": "match",
        "min": "$0.0001",
        "max": "$0.02",
        "fallback": "$0.002",
    }
    for item in (summarize, chat):
        (accept,) = item["accepts"]
        assert "amount" not in accept  # the live 402 quotes it
        assert accept == {
            "scheme": "exact",
            "network": "eip155:84532",
            "asset": ASSET.address,
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"},
        }


async def test_the_middleware_serves_the_document_free_and_without_secrets(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(WELL_KNOWN_PATH)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "payment-required" not in response.headers
    served = response.json()
    assert [i["resource"]["url"] for i in served["items"]][:2] == [
        f"{BASE_URL}/weather",
        f"{BASE_URL}/v1/chat",
    ]
    # Only public facts: no facilitator URL, header or pricing condition, no store.
    assert_no_secret(response.text)
    assert "facilitator" not in response.text.lower()
    assert "memory://" not in response.text


async def test_free_routes_are_not_listed_and_pass_through(client: httpx.AsyncClient) -> None:
    document = (await client.get(WELL_KNOWN_PATH)).json()
    assert not any(i["input"]["routeTemplate"] == "/free" for i in document["items"])
    assert (await client.get("/free")).text == "free"
