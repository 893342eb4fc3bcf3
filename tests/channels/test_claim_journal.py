"""The report's channel figures equal the chain's: after paid channel requests from two payers
(the official client), a claim and a settle, ``x402gate report`` shows as *claimed* exactly what
the escrow's ``Claimed`` events of the claim transactions moved (per payer too), and as
*settled* exactly what the settle transaction transferred to the receiver; on SQLite and Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from x402gate import PaymentGate
from x402gate.channels import ClaimEngine
from x402gate.cli import main
from x402gate.gate import ChannelSettings
from x402gate.testing._chain_fixtures import PAYER_TOKEN_UNITS

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator
from .test_claims import pay
from .test_gate_channels import make_app

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

pytestmark = pytest.mark.chain


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gate.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def gate(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    receiver_authorizer: LocalAccount,
    store_url: str,
) -> Iterator[PaymentGate]:
    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=store_url,
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer_key=receiver_authorizer.key.hex(), min_deposit=DEPOSIT_FLOOR
        ),
    )
    yield gate
    gate.close()


def report(capsys: pytest.CaptureFixture[str], store_url: str) -> dict[str, Any]:
    """``x402gate report --store URL --format json``, as an operator runs it."""
    capsys.readouterr()
    assert main(["report", "--store", store_url, "--format", "json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def claimed_on_chain(
    chain: LocalChain, contracts: ChannelContracts, transactions: list[str]
) -> dict[str, int]:
    """Channel id → what the ``Claimed`` events of ``transactions`` moved."""
    moved: dict[str, int] = {}
    for tx in transactions:
        receipt = chain.w3.eth.get_transaction_receipt(tx)  # type: ignore[arg-type]
        assert receipt["status"] == 1
        for event in contracts.events(receipt, "Claimed"):
            channel_id = "0x" + bytes(event["channelId"]).hex()
            moved[channel_id] = moved.get(channel_id, 0) + int(event["amount"])
    return moved


async def test_the_reports_claimed_and_settled_figures_are_the_chains(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    gate: PaymentGate,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from x402gate.demo import serve_in_thread

    second = chain.new_account(eth_wei=0, token=test_token, token_amount=PAYER_TOKEN_UNITS)
    receiver = gate.pay_to[chain.network]
    with serve_in_thread(make_app(gate, {})) as base_url:
        first_channel = await pay(base_url, payer, test_token, ["/paid"] * 4)
        # A failed handler charges nothing: 2 charges for the second payer.
        second_channel = await pay(base_url, second, test_token, ["/paid", "/error", "/paid"])
    engine = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        rpc_urls={chain.network: chain.rpc_url},
        authorizer_key=receiver_authorizer.key.hex(),
        journal=gate.journal,
    )
    before = report(capsys, store_url)
    assert before["overall"]["claimed"] == before["overall"]["settled"] == "0"
    assert before["overall"]["earned"] == str(6 * PRICE)

    claim = await engine.claim()
    assert claim.failures == [] and len(claim.transactions) == 1
    held = test_token.balance_of(receiver)
    settle = await engine.settle()
    assert settle.failures == [] and len(settle.transactions) == 1
    transferred = test_token.balance_of(receiver) - held

    moved = claimed_on_chain(chain, channel_contracts, claim.transactions)
    assert moved == {first_channel: 4 * PRICE, second_channel: 2 * PRICE}
    settle_receipt = chain.w3.eth.get_transaction_receipt(settle.transactions[0])  # type: ignore[arg-type]
    [settled_event] = channel_contracts.events(settle_receipt, "Settled")
    assert settled_event["amount"] == transferred == sum(moved.values())

    after = report(capsys, store_url)
    asset = test_token.address.lower()
    [total] = [t for t in after["totals"] if t["asset"] == asset]
    assert int(total["claimed"]) == sum(moved.values())
    assert int(total["settled"]) == transferred
    assert total["network"] == chain.network
    payers = {line["payer"]: line for line in after["by_payer"]}
    assert int(payers[payer.address.lower()]["claimed"]) == moved[first_channel]
    assert int(payers[second.address.lower()]["claimed"]) == moved[second_channel]
    days = after["by_day"]
    assert sum(int(d["claimed"]) for d in days) == sum(moved.values())
    assert sum(int(d["settled"]) for d in days) == transferred
    # Claims and settlements belong to channels, not routes: no route counts them.
    assert all(line["claimed"] == line["settled"] == "0" for line in after["by_route"])

    # Each row names its transaction: the claim's for both channels, the settle's.
    rows = gate.store.journal_rows()
    claims = {r.payer: r for r in rows if r.outcome == "claim"}
    assert {r.transaction for r in claims.values()} == set(claim.transactions)
    assert [r.transaction for r in rows if r.outcome == "settle"] == settle.transactions

    # Nothing is claimed or settled twice, and nothing is recorded twice: a second run sends
    # no transaction and the report is unchanged.
    assert (await engine.claim()).transactions == []
    assert (await engine.settle()).transactions == []
    assert report(capsys, store_url)["totals"] == after["totals"]


async def test_a_claim_whose_answer_was_lost_is_recorded_once_from_the_chain(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    gate: PaymentGate,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A claim that landed on chain while its answer was lost (the store never marked it) is
    found when the channel is read from the chain again, and its row written then, once."""
    from x402gate.demo import serve_in_thread

    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * 3)
    engine = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        rpc_urls={chain.network: chain.rpc_url},
        authorizer_key=receiver_authorizer.key.hex(),
        journal=gate.journal,
    )
    # The claim goes out through a copy of the engine that keeps no journal and whose store
    # writes are lost: the chain has the claim, the store and the journal do not.
    blind = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        authorizer_key=receiver_authorizer.key.hex(),
        journal=False,
    )
    blind.store = _Forgetful(gate.store)  # type: ignore[assignment]
    lost = await blind.claim(max_batches=1)
    assert lost.failures == [] and len(lost.transactions) == 1
    assert channel_contracts.channel(channel_id).total_claimed == 3 * PRICE
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.total_claimed == 0
    assert report(capsys, store_url)["overall"]["claimed"] == "0"

    # Read again from the chain: recorded, with the amount the chain shows, once.
    again = await engine.claim(refresh=True)
    assert again.transactions == []
    await engine.claim(refresh=True)
    moved = claimed_on_chain(chain, channel_contracts, lost.transactions)
    assert report(capsys, store_url)["overall"]["claimed"] == str(moved[channel_id])
    [row] = [r for r in gate.store.journal_rows() if r.outcome == "claim"]
    assert row.transaction == "" and row.detail == "claimed on chain earlier"


async def test_a_claim_a_request_mirrored_first_is_still_recorded(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    gate: PaymentGate,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A request reading the channel from the chain between the claim transaction and its mark
    takes the new claimed total into the store first; the claim is recorded all the same."""
    from x402gate.demo import serve_in_thread

    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * 2)
    engine = ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        authorizer_key=receiver_authorizer.key.hex(),
        journal=gate.journal,
    )
    engine.store = _MirroredFirst(gate.store, channel_contracts)  # type: ignore[assignment]
    claim = await engine.claim()
    assert claim.failures == [] and len(claim.transactions) == 1
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.total_claimed == 2 * PRICE
    moved = claimed_on_chain(chain, channel_contracts, claim.transactions)
    assert report(capsys, store_url)["overall"]["claimed"] == str(moved[channel_id])
    [row] = [r for r in gate.store.journal_rows() if r.outcome == "claim"]
    assert row.transaction == claim.transactions[0]


class _MirroredFirst:
    """A store where the chain's figures of a channel reach the store just before each claim
    mark (what a concurrent request reading a stale mirror does)."""

    def __init__(self, store: Any, contracts: ChannelContracts) -> None:
        self._store = store
        self._contracts = contracts

    def channel_mark_claimed(self, channel_id: str, *args: Any, **kwargs: Any) -> bool:
        state = self._store.channel_get(channel_id)
        on_chain = self._contracts.channel(channel_id)
        self._store.channel_sync(
            channel_id,
            state.config,
            balance=on_chain.balance,
            total_claimed=on_chain.total_claimed,
            withdraw_requested_at=0,
            refund_nonce=0,
            now=args[1],
        )
        synced = self._store.channel_get(channel_id)
        assert synced.total_claimed == on_chain.total_claimed > state.total_claimed
        answer: bool = self._store.channel_mark_claimed(channel_id, *args, **kwargs)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _Forgetful:
    """A store whose claim marks are lost (a process that died before writing them)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def channel_mark_claimed(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_settle_rows_record_an_unreported_amount_as_unknown() -> None:
    """A settle answer with no amount and no RPC URL to read it: the row says so."""
    from x402gate.channels.journal import settle_row, settled_amount

    class Answer:
        amount = ""

    assert settled_amount(Answer()) is None
    row = settle_row("eip155:1", "0xAB", "0xCD", "0x01", None, 1.0)
    assert (row.amount, row.detail) == (0, "receiver 0xab; amount not reported")
