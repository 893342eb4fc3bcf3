"""Claims when things go wrong: a payer who starts a timed withdrawal, the chain unreachable
during a claim, a claim that landed but whose answer was lost.

What must hold: everything served is collected (the seller ends with exactly the sum of the
charges, the payer with the rest), nothing is recorded as claimed that the chain does not show,
and nothing is claimed twice (one claim transaction, none reverted).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from x402gate import LocalFacilitator, PaymentGate
from x402gate.channels import BackgroundClaimer, ClaimEngine, ClaimSettings
from x402gate.gate import ChannelSettings

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

N = 4


class RpcRelay:
    """A JSON-RPC relay in front of the node: ``down`` closes every connection unanswered (an
    unreachable node); ``down_after`` names a method whose call reaches the node and after which
    the relay goes down before answering it (a transaction sent, its answer lost)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.down = False
        self.down_after: str | None = None
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                calls = json.loads(body)
                names = [c["method"] for c in (calls if isinstance(calls, list) else [calls])]
                answer = None if relay.down else relay.forward(body)
                if relay.down_after in names:
                    relay.down, relay.down_after = True, None
                    answer = None
                if answer is None:
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, body: bytes) -> bytes | None:
        connection = http.client.HTTPConnection(urlsplit(self.target).netloc, timeout=10)
        try:
            connection.request("POST", "/", body, {"Content-Type": "application/json"})
            return connection.getresponse().read()
        except OSError:
            return None
        finally:
            connection.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def escrow_calls(chain: LocalChain, contracts: ChannelContracts, since: int) -> list[str]:
    """The escrow functions called by transactions mined since block ``since``, each with its
    outcome (``claimWithSignature:ok``, ``settle:reverted``)."""
    w3 = chain.w3
    escrow = contracts.settlement
    calls: list[str] = []
    for number in range(since, w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for item in block["transactions"]:
            tx: Any = item  # full transactions: mappings, not hashes
            if (tx.get("to") or "").lower() != escrow.address.lower():
                continue
            function, _ = escrow.decode_function_input(tx["input"])
            status = w3.eth.get_transaction_receipt(tx["hash"])["status"]
            calls.append(f"{function.fn_name}:{'ok' if status == 1 else 'reverted'}")
    return calls


@pytest.fixture
def relay(chain: LocalChain) -> Iterator[RpcRelay]:
    relay = RpcRelay(chain.rpc_url)
    yield relay
    relay.close()


@pytest.fixture
def local(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    facilitator_account: LocalAccount,
    relay: RpcRelay,
) -> Iterator[LocalFacilitator]:
    """Our LocalFacilitator, reaching the chain through the relay, with a short receipt wait."""
    facilitator = LocalFacilitator(
        relay.url,
        facilitator_account.key.hex(),
        networks=chain.network,
        confirmation_timeout=3,
    )
    yield facilitator
    facilitator.close()


def _gate(
    facilitator: Any, receiver: str, authorizer: LocalAccount, tmp_path: Path, test_token: TestToken
) -> PaymentGate:
    return PaymentGate(
        pay_to=receiver,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer_key=authorizer.key.hex(), min_deposit=DEPOSIT_FLOOR
        ),
    )


def _engine(gate: PaymentGate, authorizer: LocalAccount) -> ClaimEngine:
    return ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        authorizer_key=authorizer.key.hex(),
    )


async def test_the_chain_down_during_a_claim_is_retried_and_collects_everything(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    local: LocalFacilitator,
    relay: RpcRelay,
    tmp_path: Path,
) -> None:
    from x402gate.demo import serve_in_thread

    receiver = chain.new_account().address
    gate = _gate(local, receiver, receiver_authorizer, tmp_path, test_token)
    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * N)
    since = chain.w3.eth.block_number + 1
    engine = _engine(gate, receiver_authorizer)
    relay.down = True
    for _ in range(2):
        failed = await engine.claim()
        assert failed.transactions == [] and failed.amount == 0 and failed.failures
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.total_claimed == 0  # nothing recorded
    assert channel_contracts.channel(channel_id).total_claimed == 0
    relay.down = False
    report = await engine.claim()
    assert report.failures == [] and report.amount == N * PRICE
    settled = await engine.settle(report.settle)
    assert settled.failures == []
    assert test_token.balance_of(receiver) == N * PRICE
    assert escrow_calls(chain, channel_contracts, since) == ["claimWithSignature:ok", "settle:ok"]
    gate.close()


async def test_a_claim_whose_answer_was_lost_is_recognised_and_never_sent_twice(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    local: LocalFacilitator,
    relay: RpcRelay,
    tmp_path: Path,
) -> None:
    from x402gate.demo import serve_in_thread

    receiver = chain.new_account().address
    gate = _gate(local, receiver, receiver_authorizer, tmp_path, test_token)
    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * N)
    since = chain.w3.eth.block_number + 1
    engine = _engine(gate, receiver_authorizer)
    relay.down_after = "eth_sendRawTransaction"  # the node takes it; its answer never comes
    lost = await engine.claim()
    assert lost.amount == 0 and lost.failures
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.total_claimed == 0
    assert channel_contracts.channel(channel_id).total_claimed == N * PRICE  # it did land
    relay.down = False
    # The next run reads the channel on chain first: claimed already, recorded, not sent again.
    again = await engine.claim()
    assert again.transactions == [] and again.failures == []
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.total_claimed == stored.earned == N * PRICE
    assert await engine.claimable() == []
    settled = await engine.settle()
    assert settled.failures == [] and len(settled.transactions) == 1
    assert test_token.balance_of(receiver) == N * PRICE
    assert escrow_calls(chain, channel_contracts, since) == ["claimWithSignature:ok", "settle:ok"]
    gate.close()


async def test_a_withdrawing_payer_is_claimed_before_the_delay_and_nothing_is_lost(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
    tmp_path: Path,
) -> None:
    from x402gate.demo import serve_in_thread

    receiver = chain.new_account().address
    start = test_token.balance_of(payer.address)
    gate = _gate(facilitator, receiver, receiver_authorizer, tmp_path, test_token)
    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * N)
    # Only withdrawals trigger a round here; the mirror is read again at every tick.
    settings = ClaimSettings(every=None, refresh_seconds=0.001, tick_seconds=0.2, lease_seconds=5)
    claimer = BackgroundClaimer(_engine(gate, receiver_authorizer), settings, "test-claimer")
    assert await claimer.tick() is None
    assert claimer.rounds == 0 and channel_contracts.channel(channel_id).total_claimed == 0

    # The payer starts a timed withdrawal of its whole deposit (served requests included).
    stored = gate.store.channel_get(channel_id)
    assert stored is not None
    config = json.loads(stored.config)
    config_tuple = (
        config["payer"],
        config["payerAuthorizer"],
        config["receiver"],
        config["receiverAuthorizer"],
        config["token"],
        int(config["withdrawDelay"]),
        bytes.fromhex(config["salt"].removeprefix("0x")),
    )
    deposit = channel_contracts.channel(channel_id).balance
    chain.set_balance(payer.address, 10**18)  # gas for its own transactions
    escrow = channel_contracts.settlement.functions
    chain.transact(payer, escrow.initiateWithdraw(config_tuple, deposit))
    initiated = channel_contracts.pending_withdrawal(channel_id).initiated_at
    assert initiated > 0

    report = await claimer.tick()
    assert report is not None and report.amount == N * PRICE and report.failures == []
    assert claimer.rounds == 1
    assert chain.timestamp() < initiated + int(config["withdrawDelay"])  # before the delay
    assert test_token.balance_of(receiver) == N * PRICE  # claimed and settled
    assert await claimer.tick() is None  # nothing left to claim

    # The delay passes; the payer takes back what was not served, the seller keeps the rest.
    chain.rpc("evm_increaseTime", [int(config["withdrawDelay"]) + 1])
    chain.transact(payer, escrow.finalizeWithdraw(config_tuple))
    assert test_token.balance_of(payer.address) == start - N * PRICE
    assert test_token.balance_of(receiver) == N * PRICE
    assert channel_contracts.channel(channel_id).available == 0
    gate.close()


async def test_after_a_finished_withdrawal_the_claim_collects_what_the_escrow_still_holds(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    local: LocalFacilitator,
    tmp_path: Path,
) -> None:
    """No claimer ran during a payer's withdrawal: the escrow now holds less than was earned.
    The gate's claimer reads the channel on the chain itself (the local facilitator's node),
    claims what is left once and does not try again, and that channel does not hold up another
    payer's, served later."""
    from x402gate.demo import serve_in_thread

    receiver = chain.new_account().address
    other = chain.new_account(eth_wei=0, token=test_token, token_amount=10**8)
    gate = _gate(local, receiver, receiver_authorizer, tmp_path, test_token)
    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = await pay(base_url, payer, test_token, ["/paid"] * N)
        other_id = await pay(base_url, other, test_token, ["/paid"] * 2)
    earned = N * PRICE
    stored = gate.store.channel_get(channel_id)
    assert stored is not None and stored.earned == earned
    config = json.loads(stored.config)
    config_tuple = (
        config["payer"],
        config["payerAuthorizer"],
        config["receiver"],
        config["receiverAuthorizer"],
        config["token"],
        int(config["withdrawDelay"]),
        bytes.fromhex(config["salt"].removeprefix("0x")),
    )
    deposit = channel_contracts.channel(channel_id).balance
    since = chain.w3.eth.block_number + 1
    chain.set_balance(payer.address, 10**18)
    escrow = channel_contracts.settlement.functions
    chain.transact(payer, escrow.initiateWithdraw(config_tuple, deposit - earned // 2))
    chain.rpc("evm_increaseTime", [int(config["withdrawDelay"]) + 1])
    chain.transact(payer, escrow.finalizeWithdraw(config_tuple))
    assert channel_contracts.channel(channel_id).balance == earned // 2

    # One channel per claim transaction: the spent channel, listed first, is claimed for what
    # is left, then passed over; the other payer's channel is claimed next.
    settings = ClaimSettings(batch=1, refresh_seconds=0.001, tick_seconds=0.2, lease_seconds=5)
    claimer = BackgroundClaimer.for_gate(gate, settings)
    report = await claimer.tick()
    assert report is not None and report.failures == []
    assert report.amount == earned // 2 + 2 * PRICE
    assert channel_contracts.channel(channel_id).total_claimed == earned // 2
    assert channel_contracts.channel(other_id).total_claimed == 2 * PRICE
    assert test_token.balance_of(receiver) == earned // 2 + 2 * PRICE
    claimer._last_round = 0.0  # the period is over: nothing can be collected, nothing is sent
    assert await claimer.tick() is None
    assert escrow_calls(chain, channel_contracts, since) == [
        "initiateWithdraw:ok",
        "finalizeWithdraw:ok",
        "claimWithSignature:ok",
        "claimWithSignature:ok",
        "settle:ok",
    ]
    gate.close()
