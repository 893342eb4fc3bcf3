"""Claims and settlement: after N paid requests, a claim and a settle move exactly the sum of the
charges to the seller, read from the chain.

On the ASGI, FastAPI and WSGI adapters the claim engine is run by hand (what cron and the CLI
do); the gateway (from its file, settling locally with its own authorizer key) and a Flask app
(delegating the authorizer to its facilitator, over HTTP) run the background claimer their
settings ask for. The official client pays; the official facilitator or our LocalFacilitator
sends the transactions to our contracts on the local chain.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.channels import ClaimEngine
from x402gate.gate import ChannelSettings

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, channel_client, decode
from .test_gate_channels import APPS

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

pytestmark = pytest.mark.chain

N = 5


async def pay(
    base_url: str, payer: LocalAccount, test_token: TestToken, paths: list[str], client: Any = None
) -> str:
    """Each path paid by the official client (one deposit, then vouchers), or by ``client``
    (which keeps its channel across calls); the channel id."""
    from x402.http.clients import x402_httpx_transport

    client = client or channel_client(payer, test_token)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    channel_id = ""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for path in paths:
            response = await http.get(path)
            if response.status_code == 200:
                extra = decode(response.headers["payment-response"])["extra"]
                channel_id = extra["channelState"]["channelId"]
    assert channel_id
    return channel_id


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.1)


@pytest.fixture(params=sorted(APPS))
def served(
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    tmp_path: Path,
) -> Iterator[tuple[str, PaymentGate, str]]:
    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    if request.param == "fastapi":
        pytest.importorskip("fastapi")
    receiver = chain.new_account().address
    gate = PaymentGate(
        pay_to=receiver,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer_key=receiver_authorizer.key.hex(), min_deposit=DEPOSIT_FLOOR
        ),
    )
    app = APPS[request.param](gate, {})
    serve = serve_wsgi if request.param == "wsgi" else serve_in_thread
    with serve(app) as base_url:
        yield base_url, gate, receiver
    gate.close()


async def test_a_claim_and_a_settle_move_exactly_the_charges_to_the_seller(
    served: tuple[str, PaymentGate, str],
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    receiver_authorizer: LocalAccount,
) -> None:
    base_url, gate, receiver = served
    paths = ["/paid"] * 3 + ["/error"] + ["/paid"] * (N - 3)  # a failed handler charges nothing
    channel_id = await pay(base_url, payer, test_token, paths)
    deposit = channel_contracts.channel(channel_id).balance
    # A claimer signing for another seller (a shared store) passes this channel over.
    other = ClaimEngine(gate.store, gate.facilitator, assets=gate.assets, authorizer_key="11" * 32)
    skipped = await other.claim()
    assert (skipped.channels, skipped.transactions, skipped.failures) == (0, [], [])
    assert channel_contracts.channel(channel_id).total_claimed == 0
    engine = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        authorizer_key=receiver_authorizer.key.hex(),
    )
    assert [s.channel_id for s in await engine.claimable()] == [channel_id]
    report = await engine.claim()
    assert report.failures == []
    assert (report.channels, report.amount, len(report.transactions)) == (1, N * PRICE, 1)
    assert channel_contracts.channel(channel_id).total_claimed == N * PRICE
    assert test_token.balance_of(receiver) == 0  # claimed, still in the escrow
    settled = await engine.settle()
    assert settled.failures == [] and len(settled.transactions) == 1
    assert test_token.balance_of(receiver) == N * PRICE
    assert channel_contracts.receiver_account(receiver, test_token.address) == (N * PRICE,) * 2
    stored = gate.store.channel_get(channel_id)
    assert stored is not None
    assert stored.total_claimed == stored.earned == N * PRICE
    # Nothing is claimed or settled twice: the next runs send no transaction at all.
    again = await engine.claim()
    assert (again.amount, again.transactions, again.failures) == (0, [], [])
    assert (await engine.settle()).transactions == []
    assert test_token.balance_of(receiver) == N * PRICE
    # The payer keeps the rest in the escrow.
    assert channel_contracts.channel(channel_id).available == deposit - N * PRICE


GATEWAY = """\
gateway:
  secret: ${{SESSION_SECRET}}
pay_to: "{pay_to}"
accepts:
  - network: "{network}"
    asset: "{token}"
    name: USD Coin
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: sqlite:///{tmp}/gateway.db
channels:
  receiver_authorizer_key: ${{AUTHORIZER_KEY}}
  min_deposit: {floor}
  claim:
    every: 0.5
    tick_seconds: 0.2
    lease_seconds: 5
upstreams:
  api:
    url: {upstream}
routes:
  "GET /data/*":
    upstream: api
    path: /echo/{{*}}
    price: $0.001
"""


async def test_the_gateways_background_claimer_collects_every_charge(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    facilitator_account: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    pytest.importorskip("yaml")
    from x402gate.gateway import Gateway, parse_config
    from x402gate.gateway.app import server_stack
    from x402gate.testing.fake_llm import serve_asgi, serve_fake_llm

    receiver = chain.new_account().address
    with serve_fake_llm() as upstream:
        text = GATEWAY.format(
            pay_to=receiver,
            network=chain.network,
            token=test_token.asset.address,
            rpc_url=chain.rpc_url,
            tmp=tmp_path,
            floor=DEPOSIT_FLOOR,
            upstream=upstream.url,
        )
        env = {
            "SESSION_SECRET": "s" * 48,
            "FACILITATOR_KEY": facilitator_account.key.hex(),
            "AUTHORIZER_KEY": receiver_authorizer.key.hex(),
        }
        gateway = Gateway(parse_config(textwrap.dedent(text), source="gateway.yaml", env=env))
        options = {**server_stack(), "lifespan": "on", "log_level": "warning"}
        with serve_asgi(gateway, **options) as base_url:
            paths = [f"/data/item-{i}" for i in range(N)]
            channel_id = await pay(base_url, payer, test_token, paths)
            await asyncio.to_thread(wait_for, lambda: test_token.balance_of(receiver) == N * PRICE)
            claimer = gateway.gate.claimer
            assert claimer is not None and claimer.running
            # The claim and the settlement are in the gateway's journal, with their amounts.
            store = gateway.gate.store
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    sum(r.amount for r in store.journal_rows() if r.outcome == "settle")
                    == N * PRICE
                ),
            )
            assert sum(r.amount for r in store.journal_rows() if r.outcome == "claim") == N * PRICE
        assert len(upstream.requests) == N
    assert channel_contracts.channel(channel_id).total_claimed == N * PRICE
    assert channel_contracts.receiver_account(receiver, test_token.address) == (N * PRICE,) * 2
    await gateway.aclose()
    assert not claimer.running


def test_a_flask_app_delegating_to_its_facilitator_claims_in_the_background(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    facilitator_account: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    pytest.importorskip("flask")
    from flask import Flask

    from x402gate._runner import run_sync
    from x402gate.facilitators import LocalFacilitator
    from x402gate.flask import X402Gate
    from x402gate.testing.facilitator_server import FacilitatorServer
    from x402gate.testing.servers import serve_wsgi

    receiver = chain.new_account().address
    local = LocalFacilitator(
        chain.rpc_url,
        facilitator_account.key.hex(),
        networks=chain.network,
        receiver_authorizer_key=receiver_authorizer.key.hex(),
    )
    with FacilitatorServer(local) as service:
        app = Flask(__name__)
        app.config.update(
            {
                "X402GATE_PAY_TO": receiver,
                "X402GATE_ASSETS": [test_token.asset],
                "X402GATE_FACILITATOR_URL": service.url,
                "X402GATE_STORE_URL": f"sqlite:///{tmp_path / 'flask.db'}",
                "X402GATE_LIMIT_IN_FLIGHT": False,
                "X402GATE_ROUTES": {"GET /paid": "$0.001"},
                "X402GATE_CHANNELS": {
                    "RECEIVER_AUTHORIZER": "facilitator",
                    "MIN_DEPOSIT": DEPOSIT_FLOOR,
                    "CLAIM": {"EVERY": 0.5, "TICK_SECONDS": 0.2, "LEASE_SECONDS": 5},
                },
            }
        )

        @app.get("/paid")
        def paid() -> dict[str, str]:
            return {"content": "PAID"}

        X402Gate(app)
        gate = app.extensions["x402gate"].gate
        try:
            with serve_wsgi(app) as base_url:
                channel_id = run_sync(pay(base_url, payer, test_token, ["/paid"] * N))
                wait_for(lambda: test_token.balance_of(receiver) == N * PRICE)
            assert gate.claimer is not None and gate.claimer.rounds >= 1
            # The facilitator service answers the amount it settled: the journal records it.
            wait_for(lambda: any(r.outcome == "settle" for r in gate.store.journal_rows()))
            rows = gate.store.journal_rows()
            assert sum(r.amount for r in rows if r.outcome == "claim") == N * PRICE
            assert [r.amount for r in rows if r.outcome == "settle"] == [N * PRICE]
            assert channel_contracts.channel(channel_id).total_claimed == N * PRICE
            # The facilitator signed the claim: this app holds no authorizer key.
            assert gate.channels.receiver_authorizer_key is None
        finally:
            run_sync(gate.aclose())
            local.close()


async def test_the_threshold_and_the_period_decide_when_a_round_runs(
    served: tuple[str, PaymentGate, str],
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    receiver_authorizer: LocalAccount,
) -> None:
    from x402gate.channels import BackgroundClaimer, ClaimSettings

    base_url, gate, receiver = served
    engine = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        authorizer_key=receiver_authorizer.key.hex(),
    )
    threshold = ClaimSettings(every=None, threshold=3 * PRICE, withdrawals=False)
    claimer = BackgroundClaimer(engine, threshold, "threshold")
    client = channel_client(payer, test_token)
    channel_id = await pay(base_url, payer, test_token, ["/paid"] * 2, client)
    assert await claimer.tick() is None  # 2 charges unclaimed: below the threshold
    assert channel_contracts.channel(channel_id).total_claimed == 0
    await pay(base_url, payer, test_token, ["/paid"], client)
    report = await claimer.tick()  # 3: at the threshold
    assert report is not None and report.amount == 3 * PRICE
    assert test_token.balance_of(receiver) == 3 * PRICE

    # Periodic: a round at once (the claimer just took over), then not before the period.
    periodic = BackgroundClaimer(engine, ClaimSettings(every=3600, withdrawals=False), "p")
    await pay(base_url, payer, test_token, ["/paid"], client)
    report = await periodic.tick()
    assert report is not None and report.amount == PRICE
    await pay(base_url, payer, test_token, ["/paid"], client)
    assert await periodic.tick() is None  # within the hour
    assert channel_contracts.channel(channel_id).total_claimed == 4 * PRICE
    assert test_token.balance_of(receiver) == 4 * PRICE
