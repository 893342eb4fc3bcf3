"""PaymentGate paths that need no chain: start-up checks, store outages, pricing errors, events.

The facilitator here is a stub (a unit test of the gate alone); the paid flow against a real
chain and real facilitators is in test_gate_chain.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from eth_account import Account
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402gate import PaymentError, PaymentEvent, PaymentGate
from x402gate.assets import Asset
from x402gate.errors import ConfigurationError, StoreError
from x402gate.request import RequestInfo
from x402gate.stores.memory import MemoryStore
from x402gate.testing.payments import encode_payment, sign_exact_payment

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address


class StubFacilitator:
    def __init__(self, networks: tuple[str, ...] = ("eip155:84532",)) -> None:
        self.networks = networks
        self.settled: list[Any] = []

    async def supported(self) -> SupportedResponse:
        return SupportedResponse(
            kinds=[SupportedKind(x402_version=2, scheme="exact", network=n) for n in self.networks],
            extensions=[],
            signers={},
        )

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.settled.append(payload)
        return SettleResponse(
            success=True, transaction="0x" + "ab" * 32, network=requirements.network
        )


class BrokenStore(MemoryStore):
    def claim(self, *args: Any) -> Any:
        raise StoreError("redis down at redis://:hunter2@db:6379")


def make_gate(**kw: Any) -> PaymentGate:
    kw.setdefault("facilitator", StubFacilitator())
    kw.setdefault("store", "memory://")
    kw.setdefault("assets", ASSET)
    return PaymentGate(pay_to=PAY_TO, **kw)


def request(headers: dict[str, str] | None = None, path: str = "/paid") -> RequestInfo:
    return RequestInfo("GET", path, headers=headers or {}, url=f"https://api.test{path}")


async def paid_request(gate: PaymentGate, route: Any) -> RequestInfo:
    (req,) = await gate.requirements(route, request())
    payer = Account.create()
    return request(
        {
            "PAYMENT-SIGNATURE": encode_payment(
                sign_exact_payment(payer, req, valid_before=int(time.time()) + 200)
            )
        }
    )


async def test_a_facilitator_that_supports_none_of_our_networks_fails_closed() -> None:
    gate = make_gate(facilitator=StubFacilitator(networks=()))
    route = gate.route("$0.01")
    for _ in range(2):  # and keeps failing closed, request after request
        with pytest.raises(PaymentError) as info:
            await gate.begin(route, await paid_request(gate, route))
        assert info.value.status_code == 503 and info.value.code == "payment_unavailable"


async def test_store_outage_is_a_503_without_the_driver_text() -> None:
    gate = make_gate(store=BrokenStore())
    route = gate.route("$0.01")
    with pytest.raises(PaymentError) as info:
        await gate.begin(route, await paid_request(gate, route))
    assert info.value.status_code == 503 and info.value.code == "store_unavailable"
    assert "hunter2" not in str(info.value.body) and "hunter2" not in info.value.message


async def test_a_price_function_that_fails_is_a_sanitized_500() -> None:
    gate = make_gate()
    route = gate.route(lambda r: "not a price with secret sk-123")
    with pytest.raises(PaymentError) as info:
        await gate.begin(route, request())
    assert info.value.status_code == 500 and info.value.code == "pricing_error"
    assert "sk-123" not in str(info.value.body)


async def test_events_follow_the_flow_and_a_failing_listener_breaks_nothing() -> None:
    gate = make_gate()
    seen: list[str] = []

    @gate.on_event
    def record(event: PaymentEvent) -> None:
        seen.append(event.kind)

    @gate.on_event
    async def explode(event: PaymentEvent) -> None:
        raise RuntimeError("listener bug")

    route = gate.route("$0.01")
    with pytest.raises(PaymentError):
        await gate.begin(route, request())
    session = await gate.begin(route, await paid_request(gate, route))
    headers = await gate.finish(session, 200)
    assert "PAYMENT-RESPONSE" in headers
    assert seen == ["challenged", "verified", "settled"]


async def test_a_session_is_finished_once() -> None:
    facilitator = StubFacilitator()
    gate = make_gate(facilitator=facilitator)
    route = gate.route("$0.01")
    session = await gate.begin(route, await paid_request(gate, route))
    first = await gate.finish(session, 200)
    assert await gate.finish(session, 200) == first
    await gate.abort(session)
    assert len(facilitator.settled) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pay_to": "0x" + "00" * 20},
        {"pay_to": "not an address"},
        {"pay_to": {"eip155:8453": PAY_TO}},
        {"max_timeout_seconds": 5},
        {"max_timeout_seconds": True},
        {"facilitator": object()},
        {"store": "ftp://nowhere"},
    ],
)
def test_bad_gate_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "pay_to": PAY_TO,
        "assets": ASSET,
        "facilitator": StubFacilitator(),
        "store": "memory://",
    }
    with pytest.raises(ConfigurationError):
        PaymentGate(**{**base, **kwargs})


def test_network_or_assets_must_be_given() -> None:
    with pytest.raises(ConfigurationError, match="network"):
        PaymentGate(pay_to=PAY_TO, facilitator=StubFacilitator(), store="memory://")


def test_unknown_settlement_policy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="settlement"):
        make_gate().route("$0.01", settlement="later")  # type: ignore[arg-type]


async def _challenge_of(gate: PaymentGate, route: Any, req: RequestInfo) -> PaymentError:
    with pytest.raises(PaymentError) as info:
        await gate.begin(route, req)
    return info.value


async def test_repeated_402s_of_a_flat_route_are_identical_and_skip_pricing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = make_gate()
    route = gate.route("$0.01", description="the thing")
    priced: list[str] = []
    original = gate.requirements

    async def counting(route: Any, req: RequestInfo) -> Any:
        priced.append(req.url)
        return await original(route, req)

    monkeypatch.setattr(gate, "requirements", counting)
    first, second = [await _challenge_of(gate, route, request()) for _ in range(2)]
    assert priced == ["https://api.test/paid"]  # the second 402 came from the cache
    assert (first.status_code, first.code, first.headers, first.body) == (
        second.status_code,
        second.code,
        second.headers,
        second.body,
    )
    second.headers["X-Changed"] = "yes"  # what one answer's caller does is not shared
    assert "X-Changed" not in (await _challenge_of(gate, route, request())).headers
    # Each URL has its own terms (the resource URL is in them).
    other = await _challenge_of(gate, route, request(path="/paid?page=2"))
    assert other.body["resource"]["url"] == "https://api.test/paid?page=2"
    # A request carrying a payment is never answered from the cache.
    bad = await _challenge_of(gate, route, request({"PAYMENT-SIGNATURE": "%%%"}))
    assert (bad.status_code, bad.code) == (400, "invalid_payment_header")
    paid = await gate.begin(route, await paid_request(gate, route))
    assert paid.payment.amount == 10_000
    await gate.abort(paid)


async def test_prices_that_depend_on_the_request_are_never_answered_from_the_cache() -> None:
    gate = make_gate()
    prices = iter(["$0.01", "$0.02"])
    route = gate.route(lambda req: next(prices))
    amounts = [
        (await _challenge_of(gate, route, request())).body["accepts"][0]["maxAmountRequired"]
        for _ in range(2)
    ]
    assert amounts == ["10000", "20000"]


# -- x402 v1 clients: the body they read, the receipt they get ---------------------------------

LOCAL = Asset("eip155:31337", "0x5FbDB2315678afecb367f032d93F642f64180aa3", "USD Coin", "2")


def _decoded(value: str) -> Any:
    return json.loads(base64.b64decode(value))


async def test_a_network_without_a_v1_name_keeps_the_v2_body() -> None:
    gate = make_gate(facilitator=StubFacilitator(networks=(LOCAL.network,)), assets=LOCAL)
    answer = await _challenge_of(gate, gate.route("$0.01"), request())
    header = _decoded(answer.headers["PAYMENT-REQUIRED"])
    assert {k: v for k, v in answer.body.items() if k != "message"} == header
    assert answer.body["x402Version"] == 2 and answer.body["accepts"][0]["amount"] == "10000"


async def test_the_v1_body_lists_only_the_networks_a_v1_client_can_name() -> None:
    # A v1 client refuses the whole document when one entry names a network it does not know.
    gate = make_gate(
        facilitator=StubFacilitator(networks=(LOCAL.network, ASSET.network)),
        assets=[LOCAL, ASSET],
    )
    route = gate.route("$0.01", description="the thing", mime_type="text/plain")
    answer = await _challenge_of(gate, route, request())
    header = _decoded(answer.headers["PAYMENT-REQUIRED"])
    assert [a["network"] for a in header["accepts"]] == ["eip155:31337", "eip155:84532"]
    assert answer.body["x402Version"] == 1 and answer.body["error"] == "payment_required"
    assert answer.body["accepts"] == [
        {
            "scheme": "exact",
            "network": "base-sepolia",
            "maxAmountRequired": "10000",
            "resource": "https://api.test/paid",
            "description": "the thing",
            "mimeType": "text/plain",
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 300,
            "asset": ASSET.address,
            "extra": {"name": "USDC", "version": "2"},
        }
    ]
    # The official SDK's v1 model reads it (it is what its clients fall back to without header).
    from x402.schemas import PaymentRequiredV1

    parsed = PaymentRequiredV1.model_validate(answer.body)
    assert parsed.accepts[0].max_amount_required == "10000"
    # What v1 readers ignore stays for everyone else.
    assert answer.body["resource"] == header["resource"]
    assert answer.body["extensions"] == header["extensions"]


async def test_a_v1_payment_gets_a_v1_receipt_naming_the_network_by_its_v1_name() -> None:
    facilitator = StubFacilitator()
    gate = make_gate(facilitator=facilitator)
    route = gate.route("$0.01")
    (req,) = await gate.requirements(route, request())
    signed = sign_exact_payment(Account.create(), req, valid_before=int(time.time()) + 200)
    v1 = {"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": signed.payload}
    header = base64.b64encode(json.dumps(v1).encode()).decode()
    session = await gate.begin(route, request({"X-PAYMENT": header}))
    headers = await gate.finish(session, 200)
    assert set(headers) == {"X-PAYMENT-RESPONSE"}
    assert _decoded(headers["X-PAYMENT-RESPONSE"]) == {
        "success": True,
        "transaction": "0x" + "ab" * 32,
        "network": "base-sepolia",
    }
    # The facilitator was asked in v2 terms, with the server's own requirement.
    (settled,) = facilitator.settled
    assert settled.x402_version == 2 and settled.accepted == req


class RecordingStore(MemoryStore):
    """A memory store that records which of its operations were called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.startswith("_") and name != "calls" and callable(value):
            super().__getattribute__("calls").append(name)
        return value


async def test_an_unpaid_request_on_a_flat_route_shares_nothing_with_other_instances() -> None:
    # A 402 is answered from the process's own cache: no store operation, so instances behind a
    # load balancer do not contend over a store for requests that pay nothing.
    store = RecordingStore()
    gate = make_gate(store=store)
    route = gate.route("$0.01")
    await _challenge_of(gate, route, request())  # the first 402 builds the cached terms
    store.calls.clear()
    for _ in range(20):
        assert (await _challenge_of(gate, route, request())).status_code == 402
    assert store.calls == []
    paid = await gate.begin(route, await paid_request(gate, route))
    assert store.calls  # a payment does use the store (the recorder works)
    await gate.abort(paid)
