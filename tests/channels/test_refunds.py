"""Refunds of channels on the local chain: a client's cooperative refund on every adapter (the
official Python client's ``refund``), and the seller's refund of idle channels. The seller keeps
exactly what it served, the payer gets the rest back, read from the chain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.gate import ChannelSettings
from x402gate.gate.refunds import ChannelRefunder

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, voucher_header
from ._kit import decode as _decode
from .test_gate_channels import APPS

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

WEEK = 7 * 24 * 3600


def _client(
    payer: LocalAccount, test_token: TestToken, rpc_url: str | None = None
) -> tuple[Any, Any]:
    """The official client paying by channel, and its batch-settlement scheme (which refunds);
    with ``rpc_url`` it reads the chain to resume from a corrective 402."""
    from x402 import x402Client
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC

    from x402gate.testing.clients import spend_controls_for

    signer: Any = EthAccountSigner(payer)
    if rpc_url is not None:
        signer = EthAccountSignerWithRPC(payer, rpc_url=rpc_url)
    scheme = BatchSettlementEvmScheme(signer)
    client = x402Client()
    client.register(test_token.asset.network, scheme)
    client.set_spend_controls(spend_controls_for(test_token.asset))
    return client, scheme


@pytest.fixture
def serve_gate(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    tmp_path: Any,
) -> Iterator[Any]:
    """Serves an app (``APPS`` key) behind a gate with channels; ``own_key`` makes the gate
    sign refunds and claims with the receiver authorizer's key."""
    from contextlib import ExitStack

    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    stack = ExitStack()

    def start(kind: str, *, own_key: bool = False) -> tuple[str, PaymentGate, dict[str, int]]:
        if own_key:
            settings = ChannelSettings(
                receiver_authorizer_key=receiver_authorizer.key.hex(), min_deposit=DEPOSIT_FLOOR
            )
        else:
            settings = ChannelSettings(
                receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
            )
        gate = PaymentGate(
            pay_to=chain.new_account().address,
            assets=test_token.asset,
            facilitator=facilitator,
            store=f"sqlite:///{tmp_path / (kind + '.db')}",
            startup_checks="off",
            limit_in_flight=False,
            channels=settings,
        )
        stack.callback(gate.close)
        runs: dict[str, int] = {}
        serve = serve_wsgi if kind == "wsgi" else serve_in_thread
        base_url = stack.enter_context(serve(APPS[kind](gate, runs)))
        return base_url, gate, runs

    with stack:
        yield start


async def _pay(base_url: str, client: Any, n: int) -> str:
    from x402.http.clients import x402_httpx_transport

    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    channel_id = ""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        for _ in range(n):
            response = await http.get("/paid")
            assert response.status_code == 200, response.text
            receipt = _decode(response.headers["payment-response"])
            channel_id = receipt["extra"]["channelState"]["channelId"]
    return channel_id


@pytest.mark.parametrize("kind", sorted(APPS))
async def test_a_cooperative_refund_claims_what_was_served_and_returns_the_rest(
    kind: str,
    serve_gate: Any,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
) -> None:
    if kind == "fastapi":
        pytest.importorskip("fastapi")
    base_url, gate, runs = serve_gate(kind)
    client, scheme = _client(payer, test_token)
    before = test_token.balance_of(payer.address)
    n = 3
    channel_id = await _pay(base_url, client, n)
    deposit = channel_contracts.channel(channel_id).balance
    assert deposit >= DEPOSIT_FLOOR and runs == {"paid": n}

    settled = await asyncio.to_thread(scheme.refund, base_url + "/paid")

    assert settled.success is True and settled.transaction
    assert int(settled.amount) == deposit - n * PRICE
    assert runs == {"paid": n}  # neither the refund nor its probe ran the route
    on_chain = channel_contracts.channel(channel_id)
    assert (on_chain.total_claimed, on_chain.available) == (n * PRICE, 0)
    assert test_token.balance_of(payer.address) == before - n * PRICE
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.step is None
    assert (stored.balance, stored.total_claimed, stored.earned) == (
        n * PRICE,
        n * PRICE,
        n * PRICE,
    )
    # A voucher signed after the refund is refused: nothing is left to pay it with.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        offer = _decode((await http.get("/paid")).headers["payment-required"])["accepts"][1]
        header = voucher_header(gate.store, offer, channel_id, payer, (n + 1) * PRICE)
        late = await http.get("/paid", headers={"PAYMENT-SIGNATURE": header})
    assert late.status_code == 402
    assert late.json()["error"] == "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    assert runs == {"paid": n}


async def test_a_refunded_channel_pays_again_after_a_new_deposit(
    serve_gate: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
) -> None:
    base_url, gate, runs = serve_gate("asgi")
    client, scheme = _client(payer, test_token, chain.rpc_url)
    channel_id = await _pay(base_url, client, 2)
    assert (await asyncio.to_thread(scheme.refund, base_url + "/paid")).success is True
    # The client forgot the channel; the corrective 402 resyncs it, and it deposits again.
    assert await _pay(base_url, client, 2) == channel_id
    assert runs == {"paid": 4}
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and (stored.charged, stored.total_claimed) == (4 * PRICE, 2 * PRICE)
    on_chain = channel_contracts.channel(channel_id)
    assert on_chain.balance == stored.balance > 2 * PRICE and on_chain.total_claimed == 2 * PRICE


@pytest.mark.chain
async def test_the_typescript_client_refunds_its_channel(
    serve_gate: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
) -> None:
    from .test_ts_client import pay_with_ts_client

    base_url, gate, runs = serve_gate("asgi")
    before = test_token.balance_of(payer.address)
    n = 3
    report = await asyncio.to_thread(
        pay_with_ts_client, payer, test_token, chain.rpc_url, n, f"{base_url}/paid", refund=True
    )
    assert [a["status"] for a in report["answers"]] == [200] * n
    opened = report["answers"][0]["paymentResponse"]["extra"]["channelState"]
    channel_id, deposit = opened["channelId"], int(opened["balance"])
    refund = report["refund"]
    assert refund["success"] is True and refund["transaction"], refund
    on_chain = channel_contracts.channel(channel_id)
    assert (on_chain.total_claimed, on_chain.available) == (n * PRICE, 0)
    assert int(refund["amount"]) == deposit - n * PRICE
    assert test_token.balance_of(payer.address) == before - n * PRICE
    assert runs == {"paid": n}
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.balance == n * PRICE


async def test_a_partial_refund_leaves_the_channel_open(
    serve_gate: Any,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
) -> None:
    from x402.mechanisms.evm.batch_settlement.client import RefundOptions

    base_url, gate, runs = serve_gate("asgi")
    client, scheme = _client(payer, test_token)
    channel_id = await _pay(base_url, client, 2)
    deposit = channel_contracts.channel(channel_id).balance
    part = 5 * PRICE
    settled = await asyncio.to_thread(
        scheme.refund, base_url + "/paid", RefundOptions(amount=str(part))
    )
    assert settled.success is True and int(settled.amount) == part
    on_chain = channel_contracts.channel(channel_id)
    assert (on_chain.balance, on_chain.total_claimed) == (deposit - part, 2 * PRICE)
    # The rest still pays: the client's next voucher is served.
    await _pay(base_url, client, 1)
    assert runs == {"paid": 3}
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.earned == 3 * PRICE


async def test_idle_channels_are_refunded_by_the_seller_with_its_own_key(
    serve_gate: Any,
    payer: LocalAccount,
    chain: LocalChain,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
) -> None:
    base_url, gate, _ = serve_gate("asgi", own_key=True)
    idle_payer = chain.new_account()
    test_token.mint(idle_payer.address, 10**9)
    idle_id = await _pay(base_url, _client(idle_payer, test_token)[0], 2)
    busy_id = await _pay(base_url, _client(payer, test_token)[0], 1)
    before = test_token.balance_of(idle_payer.address)
    deposit = channel_contracts.channel(idle_id).balance
    # The facilitator holds no authorizer key now: the refunder's own signatures must do.
    from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator

    facilitator.inner = BatchSettlementEvmFacilitator(facilitator.inner._signer)
    key = receiver_authorizer.key.hex()
    network = [test_token.asset.network]
    assert (
        await ChannelRefunder(gate.store, facilitator, network, receiver_authorizer_key=key).idle(
            WEEK
        )
        == []
    )  # both were used a moment ago
    later = time.time() + WEEK + 60
    refunder = ChannelRefunder(
        gate.store, facilitator, network, receiver_authorizer_key=key, clock=lambda: later
    )
    assert sorted(s.channel_id for s in await refunder.idle(WEEK)) == sorted([idle_id, busy_id])
    done, failed = await refunder.refund_idle(WEEK)
    assert failed == {}
    assert sorted(r.channel_id for r in done) == sorted([idle_id, busy_id])
    idle = next(r for r in done if r.channel_id == idle_id)
    assert (idle.refunded, idle.claimed) == (deposit - 2 * PRICE, 2 * PRICE)
    assert test_token.balance_of(idle_payer.address) == before + deposit - 2 * PRICE
    assert channel_contracts.channel(idle_id) == (2 * PRICE, 2 * PRICE)
    # Nothing is left to refund: a second pass does nothing.
    assert await refunder.idle(WEEK) == []


async def test_operators_list_channels_and_refund_one_from_the_command_line(
    serve_gate: Any,
    payer: LocalAccount,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    facilitator_service: Any,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from x402gate.cli import main

    base_url, _, _ = serve_gate("wsgi")
    n = 4
    channel_id = await _pay(base_url, _client(payer, test_token)[0], n)
    deposit = channel_contracts.channel(channel_id).balance
    before = test_token.balance_of(payer.address)
    store = f"sqlite:///{tmp_path / 'wsgi.db'}"
    capsys.readouterr()

    assert await asyncio.to_thread(main, ["channels", "list", "--store", store, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["channel_id"] == channel_id and row["payer"] == payer.address
    assert (row["balance"], row["charged"], row["earned"]) == (str(deposit), *[str(n * PRICE)] * 2)
    assert (row["claimed"], row["unclaimed"]) == ("0", str(n * PRICE))
    assert row["refundable"] == str(deposit - n * PRICE) and row["withdrawal"] is None

    refund = ["channels", "refund", "--store", store, "--facilitator", facilitator_service.url]
    assert await asyncio.to_thread(main, [*refund, "--json", channel_id]) == 0
    (done,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (done["refunded"], done["claimed"]) == (str(deposit - n * PRICE), str(n * PRICE))
    assert test_token.balance_of(payer.address) == before + deposit - n * PRICE
    assert channel_contracts.channel(channel_id) == (n * PRICE, n * PRICE)
    # Again: nothing left, said so, and a failure status for cron to see.
    assert await asyncio.to_thread(main, [*refund, channel_id]) == 1
    assert "refund_no_balance" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*refund, "--idle", "7d"]) == 0
    assert "no idle channel" in capsys.readouterr().err
