"""A gate with channels on: the official client pays a real ASGI server by deposit, then vouchers.

The official ``x402`` client (httpx transport, the batch-settlement client scheme) and the
official facilitator run against our contracts on the local chain; the gate keeps the channel
in its SQLite store, commits each charge after the handler succeeded, and answers with
``chargedAmount`` and ``channelState``, which the client checks before signing its next voucher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import Payment, PaymentGate
from x402gate.gate import ChannelSettings

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, channel_client, voucher_header
from ._kit import decode as _decode
from ._kit import open_channel as _open_channel

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


def make_app(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> Response:
        runs["paid"] = runs.get("paid", 0) + 1
        return JSONResponse({"content": "PAID", "payer": request.state.payment.payer})

    async def error(request: Request) -> Response:
        runs["error"] = runs.get("error", 0) + 1
        return JSONResponse({"error": "down"}, status_code=503)

    async def boom(request: Request) -> Response:
        runs["boom"] = runs.get("boom", 0) + 1
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/paid", paid), Route("/error", error), Route("/boom", boom)])
    prices = {"GET /paid": "$0.001", "GET /error": "$0.001", "GET /boom": "$0.001"}
    return PaymentMiddleware(app, gate=gate, routes=prices)


def make_fastapi_app(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)
    price = require_payment("$0.001")

    @app.get("/paid")
    async def paid(payment: Payment = Depends(price)) -> dict[str, str]:  # noqa: B008
        runs["paid"] = runs.get("paid", 0) + 1
        return {"content": "PAID", "payer": payment.payer}

    @app.get("/error", dependencies=[Depends(price)])
    async def error() -> JSONResponse:
        runs["error"] = runs.get("error", 0) + 1
        return JSONResponse({"error": "down"}, status_code=503)

    @app.get("/boom", dependencies=[Depends(price)])
    async def boom() -> None:
        runs["boom"] = runs.get("boom", 0) + 1
        raise RuntimeError("boom")

    return app


def make_wsgi_app(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        name = environ.get("PATH_INFO", "/").strip("/")
        runs[name] = runs.get(name, 0) + 1
        if name == "boom":
            raise RuntimeError("boom")
        if name == "error":
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "down"}']
        payer = environ["x402gate.payment"].payer
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"content": "PAID", "payer": payer}).encode()]

    prices = {"GET /paid": "$0.001", "GET /error": "$0.001", "GET /boom": "$0.001"}
    return PaymentMiddleware(app, gate=gate, routes=prices)


APPS = {"asgi": make_app, "fastapi": make_fastapi_app, "wsgi": make_wsgi_app}


@pytest.fixture(params=sorted(APPS))
def served(
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    tmp_path: Any,
) -> Iterator[tuple[str, PaymentGate, dict[str, int], str]]:
    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    receiver = chain.new_account().address
    gate = PaymentGate(
        pay_to=receiver,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
        ),
    )
    runs: dict[str, int] = {}
    if request.param == "fastapi":
        pytest.importorskip("fastapi")
    app = APPS[request.param](gate, runs)
    serve = serve_wsgi if request.param == "wsgi" else serve_in_thread
    with serve(app) as base_url:
        yield base_url, gate, runs, receiver
    gate.close()


async def test_challenge_offers_exact_then_batch_settlement(
    served: Any, receiver_authorizer: LocalAccount
) -> None:
    base_url, _, _, receiver = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.get("/paid")
    assert response.status_code == 402
    accepts = _decode(response.headers["payment-required"])["accepts"]
    assert [a["scheme"] for a in accepts] == ["exact", "batch-settlement"]
    offer = accepts[1]
    assert offer["amount"] == str(PRICE)
    assert offer["payTo"] == receiver
    assert offer["extra"]["receiverAuthorizer"] == receiver_authorizer.address
    assert offer["extra"]["withdrawDelay"] == 900
    assert offer["extra"]["minDeposit"] == str(DEPOSIT_FLOOR)


async def test_official_client_pays_n_requests_by_one_deposit_and_vouchers(
    served: Any,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
) -> None:
    from x402.http.clients import x402_httpx_transport

    base_url, gate, runs, _ = served
    client = channel_client(payer, test_token)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    n = 5
    channel_id = ""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for step in range(1, n + 1):
            response = await http.get("/paid")
            assert response.status_code == 200, response.text
            receipt = _decode(response.headers["payment-response"])
            assert receipt["success"] is True
            assert receipt["transaction"] == ""
            assert receipt["extra"]["chargedAmount"] == str(PRICE)
            state = receipt["extra"]["channelState"]
            assert state["chargedCumulativeAmount"] == str(step * PRICE)
            channel_id = state["channelId"]
        # A failed handler charges nothing; the next voucher is still accepted.
        failed = await http.get("/error")
        assert failed.status_code == 503
        again = await http.get("/paid")
        assert again.status_code == 200, again.text
        last = _decode(again.headers["payment-response"])["extra"]["channelState"]
        assert last["chargedCumulativeAmount"] == str((n + 1) * PRICE)
    assert runs == {"paid": n + 1, "error": 1}
    # One deposit on chain (the only facilitator settle), nothing claimed yet.
    assert facilitator.settled == 1
    on_chain = channel_contracts.channel(channel_id)
    assert on_chain.total_claimed == 0
    assert on_chain.balance >= DEPOSIT_FLOOR
    stored = gate.store.channel_get(channel_id)
    assert stored is not None
    assert stored.charged == (n + 1) * PRICE
    assert stored.max_claimable == (n + 1) * PRICE
    assert stored.step is None


def _voucher_header(
    gate: PaymentGate,
    offer: dict[str, Any],
    channel_id: str,
    signer: LocalAccount,
    amount: int,
    *,
    lower: bool = False,
) -> str:
    return voucher_header(gate.store, offer, channel_id, signer, amount, lower=lower)


async def test_wrong_step_gets_the_corrective_402_and_bad_signer_is_refused(
    served: Any, payer: LocalAccount, test_token: TestToken, chain: LocalChain
) -> None:
    base_url, gate, runs, _ = served
    offer, channel_id = await _open_channel(base_url, payer, test_token)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        # A voucher on a base the server never charged (the client lost count).
        header = _voucher_header(gate, offer, channel_id, payer, 5 * PRICE)
        wrong = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
        assert wrong.status_code == 402
        required = _decode(wrong.headers["payment-required"])
        code = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        assert required["error"] == code
        assert wrong.json()["error"] == code
        corrective = required["accepts"][1]
        assert corrective["extra"]["channelState"]["chargedCumulativeAmount"] == str(PRICE)
        assert corrective["extra"]["voucherState"]["signedMaxClaimable"] == str(PRICE)
        # A voucher for the right step signed by a stranger.
        stranger = chain.new_account()
        header = _voucher_header(gate, offer, channel_id, stranger, 2 * PRICE)
        forged = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
        assert forged.status_code == 402
        assert forged.json()["error"] == "invalid_batch_settlement_evm_voucher_signature"
        # The right step: served once; the same voucher again is not served.
        header = _voucher_header(gate, offer, channel_id, payer, 2 * PRICE, lower=True)
        good = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
        assert good.status_code == 200, good.text
        replay = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
        assert replay.status_code == 402
    assert runs == {"paid": 2}
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == 2 * PRICE


async def test_concurrent_requests_of_one_step_serve_exactly_one(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    base_url, gate, runs, _ = served
    offer, channel_id = await _open_channel(base_url, payer, test_token)
    header = _voucher_header(gate, offer, channel_id, payer, 2 * PRICE)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answers = await asyncio.gather(
            *(http.get("/paid", headers={"PAYMENT-SIGNATURE": header}) for _ in range(10))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 402, 409}
    assert runs == {"paid": 2}
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == 2 * PRICE


async def test_a_client_that_lost_its_state_recovers_through_the_corrective_402(
    served: Any, payer: LocalAccount, test_token: TestToken, chain: LocalChain
) -> None:
    from x402.http.clients import x402_httpx_transport

    base_url, gate, runs, _ = served
    _, channel_id = await _open_channel(base_url, payer, test_token)
    # A fresh client of the same payer: no memory of the channel or of what was charged.
    client = channel_client(payer, test_token, chain.rpc_url)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        first = await http.get("/paid")
        assert first.status_code == 200, first.text
        second = await http.get("/paid")
        assert second.status_code == 200, second.text
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == 3 * PRICE
    assert runs == {"paid": 3}


async def test_a_raising_handler_charges_nothing_and_a_down_facilitator_serves_nothing(
    served: Any,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    chain: LocalChain,
) -> None:
    base_url, gate, runs, _ = served
    offer, channel_id = await _open_channel(base_url, payer, test_token)
    header = _voucher_header(gate, offer, channel_id, payer, 2 * PRICE)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        with contextlib.suppress(httpx.HTTPError):  # the server may drop the connection
            boom = await http.get("/boom", headers={"PAYMENT-SIGNATURE": header})
            assert boom.status_code >= 500
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.charged == PRICE and stored.step is None
        # The same step is then served (nothing was charged for the failed one).
        good = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
        assert good.status_code == 200, good.text
    assert runs == {"paid": 2, "boom": 1}
    # A new payer's deposit while the facilitator is down: no content, nothing stored.
    facilitator.down = True
    from x402.http.clients import x402_httpx_transport

    stranger = chain.new_account(eth_wei=10**18, token=test_token, token_amount=10_000_000)
    client = channel_client(stranger, test_token)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        refused = await http.get("/paid")
    assert refused.status_code in (502, 503), refused.text
    assert runs == {"paid": 2, "boom": 1}


class ExactOnly:
    """A facilitator that supports ``exact`` only."""

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("not called")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("not called")

    async def supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        kind = SupportedKind(x402_version=2, scheme="exact", network="eip155:84532")
        return SupportedResponse(kinds=[kind], extensions=[], signers={})


async def test_channel_settings_are_checked_and_the_facilitator_must_support_them(
    tmp_path: Any,
) -> None:
    from x402gate.errors import ConfigurationError

    authorizer = "0x" + "11" * 20
    store = f"sqlite:///{tmp_path / 'gate.db'}"

    def gate(settings: ChannelSettings) -> PaymentGate:
        return PaymentGate(
            pay_to="0x" + "22" * 20,
            network="eip155:84532",
            facilitator=ExactOnly(),
            store=store,
            limit_in_flight=False,
            channels=settings,
        )

    for bad in (
        ChannelSettings(receiver_authorizer="0x" + "00" * 20),
        ChannelSettings(receiver_authorizer=authorizer, withdraw_delay=60),
        ChannelSettings(receiver_authorizer=authorizer, min_deposit=0),
        ChannelSettings(receiver_authorizer=authorizer, sync_seconds=-1),
    ):
        with pytest.raises(ConfigurationError):
            gate(bad)
    good = gate(ChannelSettings(receiver_authorizer=authorizer))
    try:
        with pytest.raises(ConfigurationError, match="batch-settlement"):
            await good.startup()
    finally:
        good.close()


def test_official_requests_client_pays_by_vouchers(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    from x402 import x402ClientSync
    from x402.http.clients import x402_requests
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    from x402gate.testing.clients import spend_controls_for

    base_url, gate, runs, _ = served
    client = x402ClientSync()
    client.register(test_token.asset.network, BatchSettlementEvmScheme(EthAccountSigner(payer)))
    client.set_spend_controls(spend_controls_for(test_token.asset))
    with x402_requests(client) as session:
        for step in range(1, 4):
            response = session.get(f"{base_url}/paid", timeout=60)
            assert response.status_code == 200, response.text
            receipt = _decode(response.headers["payment-response"])
            state = receipt["extra"]["channelState"]
            assert state["chargedCumulativeAmount"] == str(step * PRICE)
    stored = gate.store.channel_get(state["channelId"])
    assert stored is not None and stored.charged == 3 * PRICE
    assert runs == {"paid": 3}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_two_servers_on_one_store_serve_one_request_per_step(
    backend: str,
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    payer: LocalAccount,
    tmp_path: Any,
) -> None:
    from x402gate.demo import serve_in_thread

    store = (
        f"sqlite:///{tmp_path / 'shared.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    receiver = chain.new_account().address
    gates = [
        PaymentGate(
            pay_to=receiver,
            assets=test_token.asset,
            facilitator=facilitator,
            store=store,
            startup_checks="off",
            limit_in_flight=False,
            channels=ChannelSettings(
                receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
            ),
        )
        for _ in range(2)
    ]
    runs: dict[str, int] = {}
    try:
        with (
            serve_in_thread(make_app(gates[0], runs)) as first,
            serve_in_thread(make_app(gates[1], runs)) as second,
        ):
            offer, channel_id = await _open_channel(first, payer, test_token)
            for step in (2, 3):
                header = _voucher_header(gates[1], offer, channel_id, payer, step * PRICE)
                async with httpx.AsyncClient(timeout=30) as http:
                    answers = await asyncio.gather(
                        *(
                            http.get(f"{url}/paid", headers={"PAYMENT-SIGNATURE": header})
                            for url in (first, second) * 10
                        )
                    )
                statuses = [a.status_code for a in answers]
                assert statuses.count(200) == 1, statuses
                assert set(statuses) <= {200, 402, 409}
        assert runs == {"paid": 3}
        stored = gates[0].store.channel_get(channel_id)
        assert stored is not None and stored.charged == 3 * PRICE
    finally:
        for gate in gates:
            gate.close()


async def test_channel_payments_show_in_the_metrics_and_the_payment_log(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    pytest.importorskip("prometheus_client")
    import logging

    from prometheus_client.parser import text_string_to_metric_families
    from x402.http.clients import x402_httpx_transport

    from x402gate.observability import PaymentMetrics

    base_url, gate, _, _ = served
    PaymentMetrics(gate, path="/metrics")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logger = logging.getLogger("x402gate.payments")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    transport = x402_httpx_transport(channel_client(payer, test_token), httpx.AsyncHTTPTransport())
    try:
        async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
            for _ in range(3):
                assert (await http.get("/paid")).status_code == 200
            scrape = await http.get("/metrics")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert scrape.status_code == 200
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }
    asset, network = test_token.asset.address, test_token.asset.network
    label = next(  # the route table's key, or FastAPI's path template
        dict(ls)["route"] for name, ls in found if name == "x402gate_revenue_atomic_total"
    )
    assert label in ("GET /paid", "/paid")
    revenue = {"route": label, "asset": asset, "network": network}
    # Three voucher steps earned three prices; nothing is claimed on chain yet.
    assert found[("x402gate_revenue_atomic_total", frozenset(revenue.items()))] == 3 * PRICE
    settled = {"route": label, "outcome": "settled"}
    assert found[("x402gate_requests_total", frozenset(settled.items()))] == 3
    lines = [r.x402gate for r in records]  # type: ignore[attr-defined]
    assert [(r["event"], r["payer"], r["amount"]) for r in lines] == [
        ("settled", payer.address, PRICE)
    ] * 3
