"""``x402gate channels claim`` and ``settle`` from the command line, as cron runs them: from flags
(the store URL and the facilitator service, which signs the claims, or a key read from the
environment) and from the gateway file the server runs.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from x402gate import PaymentGate
from x402gate.channels.claimer import CLAIM_LEASE
from x402gate.cli import main
from x402gate.gate import ChannelSettings
from x402gate.stores import open_store

from ._kit import DEPOSIT_FLOOR, PRICE, SdkFacilitator, channel_client
from .test_claims import GATEWAY, pay
from .test_gate_channels import make_app

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts
    from x402gate.testing.facilitator_server import FacilitatorServer

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

pytestmark = pytest.mark.chain

N = 3


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """The exit status, the JSON printed (if any) and what went to stderr."""
    status = main(["channels", *argv])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip().startswith("{") else {}), err


def test_claim_and_settle_from_flags(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    facilitator: SdkFacilitator,
    facilitator_service: FacilitatorServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from x402gate.demo import serve_in_thread

    receiver = chain.new_account().address
    store_url = f"sqlite:///{tmp_path / 'gate.db'}"
    gate = PaymentGate(
        pay_to=receiver,
        assets=test_token.asset,
        facilitator=facilitator,
        store=store_url,
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT_FLOOR
        ),
    )
    client = channel_client(payer, test_token)
    with serve_in_thread(make_app(gate, {})) as base_url:
        channel_id = asyncio.run(pay(base_url, payer, test_token, ["/paid"] * N, client))
        # The facilitator reports no settled amounts: the chain's receipts give them.
        flags = ["--store", store_url, "--facilitator", facilitator_service.url, "--json"]
        flags += ["--rpc-url", chain.rpc_url]

        # Nothing without a facilitator or a store to read.
        status, _, err = run(capsys, "claim", "--store", store_url)
        assert status == 2 and "--facilitator" in err
        status, _, err = run(capsys, "claim", "--facilitator", facilitator_service.url)
        assert status == 2 and "--store" in err

        # Another claimer holds the store's claim lease: nothing is done.
        with open_store(store_url) as store:
            assert store.lease_acquire(CLAIM_LEASE, "someone", 30, time.time())
            status, _, err = run(capsys, "claim", *flags)
            assert status == 3 and "lease is held by someone" in err
            assert store.lease_release(CLAIM_LEASE, "someone")
        assert channel_contracts.channel(channel_id).total_claimed == 0

        # The facilitator signs (this command holds no key): claimed and settled.
        status, outcome, _ = run(capsys, "claim", *flags)
        assert status == 0, outcome
        assert outcome["claimed"] == str(N * PRICE) and outcome["failures"] == []
        assert len(outcome["claim_transactions"]) == len(outcome["settle_transactions"]) == 1
        assert test_token.balance_of(receiver) == N * PRICE
        # Again: nothing left, no transaction.
        status, outcome, _ = run(capsys, "claim", *flags)
        assert status == 0 and outcome["claimed"] == "0" and outcome["claim_transactions"] == []

        # More served, claimed with the key from the environment, settled by a second command.
        asyncio.run(pay(base_url, payer, test_token, ["/paid"] * N, client))
    monkeypatch.setenv("TEST_AUTHORIZER_KEY", receiver_authorizer.key.hex())
    status, _, err = run(capsys, "claim", *flags, "--authorizer-key-env", "UNSET_VARIABLE")
    assert status == 2 and "UNSET_VARIABLE" in err
    status, outcome, _ = run(
        capsys, "claim", *flags, "--authorizer-key-env", "TEST_AUTHORIZER_KEY", "--no-settle"
    )
    assert status == 0 and outcome["claimed"] == str(N * PRICE)
    assert outcome["settle_transactions"] == []
    assert channel_contracts.channel(channel_id).total_claimed == 2 * N * PRICE
    assert test_token.balance_of(receiver) == N * PRICE
    settle = [*flags[:4], "--json", "--rpc-url", chain.rpc_url]
    target = ["--receiver", receiver, "--token", test_token.address]
    status, outcome, _ = run(capsys, "settle", *settle, *target)
    assert status == 0 and len(outcome["transactions"]) == 1
    assert outcome["settled"] == str(N * PRICE)
    assert test_token.balance_of(receiver) == 2 * N * PRICE
    status, outcome, _ = run(capsys, "settle", *settle, *target)
    assert status == 0 and outcome["transactions"] == [] and outcome["settled"] == "0"
    # Every claim and settlement the commands made is in the gate's journal, with its
    # transaction: the two claims and the two settlements, N charges each.
    rows = gate.store.journal_rows()
    claims = [r for r in rows if r.outcome == "claim"]
    settles = [r for r in rows if r.outcome == "settle"]
    assert [r.amount for r in claims] == [N * PRICE, N * PRICE]
    assert [r.amount for r in settles] == [N * PRICE, N * PRICE]
    assert {r.payer for r in claims} == {payer.address.lower()}
    assert all(r.transaction.startswith("0x") for r in claims + settles)
    assert {r.detail for r in settles} == {f"receiver {receiver.lower()}"}
    gate.close()


def test_claim_from_the_gateway_file(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    facilitator_account: LocalAccount,
    receiver_authorizer: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("yaml")
    from x402gate.gateway import Gateway, load_config
    from x402gate.gateway.app import server_stack
    from x402gate.testing.fake_llm import serve_asgi, serve_fake_llm

    receiver = chain.new_account().address
    monkeypatch.setenv("SESSION_SECRET", "s" * 48)
    monkeypatch.setenv("FACILITATOR_KEY", facilitator_account.key.hex())
    monkeypatch.setenv("AUTHORIZER_KEY", receiver_authorizer.key.hex())
    path = tmp_path / "gateway.yaml"
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
        # Claims left to cron: no background claimer.
        text = text.replace(
            "  claim:\n    every: 0.5\n    tick_seconds: 0.2\n    lease_seconds: 5\n", ""
        )
        path.write_text(textwrap.dedent(text))
        gateway = Gateway(load_config(str(path)))
        assert gateway.gate.channels is not None and gateway.gate.channels.claim is None
        options = {**server_stack(), "lifespan": "on", "log_level": "warning"}
        with serve_asgi(gateway, **options) as base_url:
            paths = [f"/data/item-{i}" for i in range(N)]
            channel_id = asyncio.run(pay(base_url, payer, test_token, paths))
        asyncio.run(gateway.aclose())
    assert channel_contracts.channel(channel_id).total_claimed == 0
    status, outcome, _ = run(capsys, "claim", "--config", str(path), "--json")
    assert status == 0, outcome
    assert outcome["claimed"] == str(N * PRICE) and len(outcome["settle_transactions"]) == 1
    assert test_token.balance_of(receiver) == N * PRICE
    status, outcome, _ = run(capsys, "settle", "--config", str(path), "--json")
    assert status == 0 and outcome == {"settled": "0", "transactions": [], "failures": []}
    # The claim and its settlement are in the gateway's journal.
    with open_store(f"sqlite:///{tmp_path}/gateway.db") as store:
        rows = store.journal_rows()
    claimed = sum(r.amount for r in rows if r.outcome == "claim")
    settled = sum(r.amount for r in rows if r.outcome == "settle")
    assert claimed == settled == N * PRICE
