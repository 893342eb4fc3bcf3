"""Fixtures of the gate-with-channels tests: the receiver's authorizer, the official
batch-settlement facilitator on the local chain (see ``_kit.py``), and gate servers in
processes of their own (see ``_server.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._kit import DEPOSIT_FLOOR, SdkFacilitator

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts
    from x402gate.testing.facilitator_server import FacilitatorServer

    from ._server import GateProcess


@pytest.fixture
def receiver_authorizer(chain: LocalChain) -> LocalAccount:
    return chain.new_account()


@pytest.fixture
def facilitator(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    facilitator_account: LocalAccount,
    receiver_authorizer: LocalAccount,
) -> SdkFacilitator:
    """The official facilitator (deposits through our collector, on the local chain), whose
    ``receiver_authorizer`` co-signs what the receiver's side needs."""
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
    from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator
    from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

    return SdkFacilitator(
        BatchSettlementEvmFacilitator(
            FacilitatorWeb3Signer(
                facilitator_account.key.hex(), chain.rpc_url, confirmation_timeout_seconds=10
            ),
            authorizer_signer=LocalAuthorizerSigner(receiver_authorizer.key.hex()),
        ),
        chain.network,
    )


@pytest.fixture
def facilitator_service(facilitator: SdkFacilitator) -> Iterator[FacilitatorServer]:
    """The official facilitator behind a real HTTP service, for gates in other processes."""
    from x402gate.testing.facilitator_server import FacilitatorServer

    with FacilitatorServer(facilitator) as server:
        yield server


@pytest.fixture
def gate_config(
    chain: LocalChain,
    test_token: TestToken,
    facilitator_service: FacilitatorServer,
    receiver_authorizer: LocalAccount,
    tmp_path: Path,
) -> dict[str, Any]:
    """What a :class:`~._server.GateProcess` serves: one receiver on the test token, the
    facilitator service, a SQLite file (``store`` may be changed) and a run directory."""
    asset = test_token.asset
    runs = tmp_path / "runs"
    runs.mkdir()
    return {
        "pay_to": chain.new_account().address,
        "asset": {
            "network": asset.network,
            "address": asset.address,
            "name": asset.name,
            "version": asset.version,
            "decimals": asset.decimals,
            "symbol": asset.symbol,
        },
        "facilitator": facilitator_service.url,
        "store": f"sqlite:///{tmp_path / 'shared.db'}",
        "runs": str(runs),
        "receiver_authorizer": receiver_authorizer.address,
        "min_deposit": DEPOSIT_FLOOR,
    }


@pytest.fixture
def gate_processes() -> Iterator[Callable[[dict[str, Any]], GateProcess]]:
    """Starts gate server processes; every one still running is stopped at the end."""
    from ._server import GateProcess

    started: list[GateProcess] = []

    def start(config: dict[str, Any]) -> GateProcess:
        process = GateProcess(config)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
