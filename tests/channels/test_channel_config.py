"""Channels configured from settings: a Flask app (``X402GATE_CHANNELS``) and the gateway
(``channels:`` in its file), each paid N times by the official client with one deposit.

The Flask app delegates the receiver authorizer to its facilitator (a LocalFacilitator with an
authorizer key, served over HTTP: the gate reads ``receiverAuthorizer`` from ``/supported``);
the gateway settles locally with its own ``receiver_authorizer_key``. Afterwards the store's
charged total and the escrow's balance on the local chain are checked.
"""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate._runner import run_sync
from x402gate.facilitators import LocalFacilitator
from x402gate.testing.facilitator_server import FacilitatorServer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

PRICE = 1_000  # $0.001 in 6-decimal units
DEPOSIT_FLOOR = 50_000
N = 4


def _decode(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


def _channel_scheme(payer: LocalAccount) -> Any:
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    return BatchSettlementEvmScheme(EthAccountSigner(payer))


@pytest.fixture
def authorizer(chain: LocalChain) -> LocalAccount:
    return chain.new_account()


@pytest.fixture
def delegating_facilitator(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    facilitator_account: LocalAccount,
    authorizer: LocalAccount,
) -> Iterator[FacilitatorServer]:
    """A LocalFacilitator that signs for receivers with ``authorizer``, over HTTP."""
    facilitator = LocalFacilitator(
        chain.rpc_url,
        facilitator_account.key.hex(),
        networks=chain.network,
        receiver_authorizer_key=authorizer.key.hex(),
    )
    try:
        with FacilitatorServer(facilitator) as server:
            yield server
    finally:
        facilitator.close()


async def test_local_facilitator_supports_batch_settlement_and_advertises_its_authorizer(
    chain: LocalChain, facilitator_account: LocalAccount, authorizer: LocalAccount
) -> None:
    plain = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    signing = LocalFacilitator(
        chain.rpc_url,
        facilitator_account.key.hex(),
        networks=chain.network,
        receiver_authorizer_key=authorizer.key.hex(),
    )
    try:
        kinds = {k.scheme: k for k in (await signing.supported()).kinds if k.x402_version == 2}
        assert set(kinds) == {"exact", "batch-settlement"}
        assert kinds["batch-settlement"].extra == {"receiverAuthorizer": authorizer.address}
        assert authorizer.key.hex() not in repr(signing)
        kinds = {k.scheme: k for k in (await plain.supported()).kinds if k.x402_version == 2}
        assert "receiverAuthorizer" not in (kinds["batch-settlement"].extra or {})
    finally:
        plain.close()
        signing.close()


def _flask_app(config: dict[str, Any]) -> Any:
    from flask import Flask

    from x402gate.flask import X402Gate

    app = Flask(__name__)
    app.config.update(config)
    runs: list[str] = []

    @app.get("/paid")
    def paid() -> dict[str, str]:
        runs.append("paid")
        return {"content": "PAID"}

    X402Gate(app)
    app.config["runs"] = runs
    return app


def test_flask_app_from_its_config_delegates_to_the_facilitator_and_is_paid_by_vouchers(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    delegating_facilitator: FacilitatorServer,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    pytest.importorskip("flask")
    from x402 import x402ClientSync
    from x402.http.clients import x402_requests

    from x402gate.testing.clients import spend_controls_for
    from x402gate.testing.servers import serve_wsgi

    receiver = chain.new_account().address
    app = _flask_app(
        {
            "X402GATE_PAY_TO": receiver,
            "X402GATE_ASSETS": [test_token.asset],
            "X402GATE_FACILITATOR_URL": delegating_facilitator.url,
            "X402GATE_STORE_URL": f"sqlite:///{tmp_path / 'flask.db'}",
            "X402GATE_LIMIT_IN_FLIGHT": False,
            "X402GATE_ROUTES": {"GET /paid": "$0.001"},
            "X402GATE_CHANNELS": {
                "receiver_authorizer": "facilitator",
                "min_deposit": DEPOSIT_FLOOR,
                "prefer": True,
            },
        }
    )
    gate = app.extensions["x402gate"].gate
    before = test_token.balance_of(payer.address)
    try:
        with serve_wsgi(app) as base_url:
            challenge = httpx.get(f"{base_url}/paid", timeout=30)
            assert challenge.status_code == 402
            accepts = _decode(challenge.headers["payment-required"])["accepts"]
            # prefer: batch-settlement first on this flat route.
            assert [a["scheme"] for a in accepts] == ["batch-settlement", "exact"]
            assert accepts[0]["extra"]["receiverAuthorizer"] == authorizer.address
            assert accepts[0]["extra"]["minDeposit"] == str(DEPOSIT_FLOOR)

            client = x402ClientSync()
            client.register(test_token.asset.network, _channel_scheme(payer))
            client.set_spend_controls(spend_controls_for(test_token.asset))
            with x402_requests(client) as session:
                for step in range(1, N + 1):
                    response = session.get(f"{base_url}/paid", timeout=60)
                    assert response.status_code == 200, response.text
                    receipt = _decode(response.headers["payment-response"])
                    state = receipt["extra"]["channelState"]
                    assert state["chargedCumulativeAmount"] == str(step * PRICE)
        channel_id = state["channelId"]
        assert app.config["runs"] == ["paid"] * N
        # One deposit: one settlement at the facilitator, the payer's tokens moved once.
        assert delegating_facilitator.calls["settle"] == 1
        on_chain = channel_contracts.channel(channel_id)
        assert on_chain.balance >= DEPOSIT_FLOOR
        assert on_chain.total_claimed == 0
        assert test_token.balance_of(payer.address) == before - on_chain.balance
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.charged == N * PRICE
        assert stored.balance == on_chain.balance
    finally:
        run_sync(gate.aclose())  # on the loop the sync app ran it on: its HTTP client too


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
  withdraw_delay: 3600
upstreams:
  api:
    url: {upstream}
routes:
  "GET /data/*":
    upstream: api
    path: /echo/{{*}}
    price: $0.001
"""


async def test_gateway_from_its_file_takes_vouchers_with_its_own_authorizer_key(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    facilitator_account: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    pytest.importorskip("yaml")
    pytest.importorskip("uvicorn")
    from x402 import x402Client
    from x402.http.clients import x402_httpx_transport

    from x402gate.gateway import Gateway, parse_config
    from x402gate.gateway.app import server_stack
    from x402gate.testing.clients import spend_controls_for
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
            "AUTHORIZER_KEY": authorizer.key.hex(),
        }
        config = parse_config(textwrap.dedent(text), source="gateway.yaml", env=env)
        assert config.channels is not None
        assert authorizer.key.hex() not in repr(config.channels)
        gateway = Gateway(config)
        options = {**server_stack(), "lifespan": "on", "log_level": "warning"}
        with serve_asgi(gateway, **options) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                challenge = await http.get("/data/x")
            assert challenge.status_code == 402
            accepts = _decode(challenge.headers["payment-required"])["accepts"]
            # No preference written: exact first on a flat route.
            assert [a["scheme"] for a in accepts] == ["exact", "batch-settlement"]
            terms = accepts[1]["extra"]
            assert terms["receiverAuthorizer"] == authorizer.address
            assert terms["withdrawDelay"] == 3600

            client = x402Client()
            client.register(test_token.asset.network, _channel_scheme(payer))
            client.set_spend_controls(spend_controls_for(test_token.asset))
            transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
            async with httpx.AsyncClient(
                base_url=base_url, transport=transport, timeout=60
            ) as http:
                for step in range(1, N + 1):
                    response = await http.get(f"/data/item-{step}")
                    assert response.status_code == 200, response.text
                    assert response.json()["path"] == f"/echo/item-{step}"
                    state = _decode(response.headers["payment-response"])["extra"]["channelState"]
                    assert state["chargedCumulativeAmount"] == str(step * PRICE)
        assert len(upstream.requests) == N
    channel_id = state["channelId"]
    on_chain = channel_contracts.channel(channel_id)
    assert on_chain.balance >= DEPOSIT_FLOOR
    assert on_chain.total_claimed == 0
    stored = gateway.gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == N * PRICE
    await gateway.aclose()
