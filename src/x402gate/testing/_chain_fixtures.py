"""pytest fixtures for the local chain; loaded by :mod:`x402gate.testing.pytest_plugin`.

One anvil and one token per test session; every test that uses :func:`chain` (directly or
through ``payer``) runs between an ``evm_snapshot`` and an ``evm_revert``, so tests never see
each other's transfers and cost about 2 ms of isolation each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from .chain import ANVIL_INSTALL_HINT, ChainUnavailable, LocalChain, TestToken, find_anvil

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from ..facilitators import LocalFacilitator
    from .channels import ChannelContracts

__all__ = [
    "CHAIN_FIXTURES",
    "PAYER_TOKEN_UNITS",
    "chain",
    "channel_contracts",
    "facilitator_account",
    "local_chain",
    "local_facilitator",
    "pay_to",
    "payer",
    "test_token",
]

PAYER_TOKEN_UNITS = 100_000_000
"""What the ``payer`` fixture holds: 100 tokens of 6 decimals."""

CHAIN_FIXTURES = frozenset(
    {
        "local_chain",
        "test_token",
        "chain",
        "channel_contracts",
        "payer",
        "facilitator_account",
        "local_facilitator",
    }
)
"""Fixtures that need anvil; a test using any of them gets the ``chain`` marker."""


def _unavailable(reason: str) -> NoReturn:
    # CI sets X402GATE_REQUIRE_CHAIN=1 so a missing anvil fails loudly instead of skipping the
    # very tests that prove payments settle.
    if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
        pytest.fail(f"{reason} (X402GATE_REQUIRE_CHAIN=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def local_chain() -> Iterator[LocalChain]:
    """The session's anvil node (chain id 31337); skipped when anvil is not installed."""
    anvil = find_anvil()
    if anvil is None:
        _unavailable(f"anvil not found: {ANVIL_INSTALL_HINT}")
    try:
        node = LocalChain(anvil).start()
    except ChainUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def test_token(local_chain: LocalChain) -> TestToken:
    """``TestUSDC`` ("USD Coin", version "2", 6 decimals), deployed once per session.

    Deployed before the first snapshot (``chain`` depends on it), so no revert ever removes it.
    """
    return local_chain.deploy_token()


@pytest.fixture
def chain(local_chain: LocalChain, test_token: TestToken) -> Iterator[LocalChain]:
    """The session chain, reverted after the test to its state before it."""
    snapshot_id = local_chain.snapshot()
    yield local_chain
    local_chain.revert(snapshot_id)


@pytest.fixture
def channel_contracts(chain: LocalChain) -> ChannelContracts:
    """x402's batch-settlement escrow and EIP-3009 deposit collector at their canonical
    addresses on ``chain``; placed inside the test's snapshot, so every test starts with
    empty channels (two ``anvil_setCode`` calls, about 2 ms)."""
    return chain.place_channel_contracts()


@pytest.fixture
def payer(chain: LocalChain, test_token: TestToken) -> LocalAccount:
    """A fresh account holding 100 test USDC (``PAYER_TOKEN_UNITS``) and no ETH.

    EIP-3009 is gasless for the payer: the facilitator sends the transaction.
    """
    return chain.new_account(eth_wei=0, token=test_token, token_amount=PAYER_TOKEN_UNITS)


@pytest.fixture
def pay_to() -> str:
    """A fresh checksummed address to receive payments (no key kept, no chain needed)."""
    from eth_account import Account

    address: str = Account.create().address
    return address


@pytest.fixture
def facilitator_account(chain: LocalChain) -> LocalAccount:
    """A fresh account with 100 ETH to pay settlement gas, for a facilitator's signer.

    Build the SDK's ``FacilitatorWeb3Signer`` in the test, not once per session: its nonce
    counter never goes back after an ``evm_revert``.
    """
    return chain.new_account(eth_wei=100 * 10**18)


@pytest.fixture
def local_facilitator(
    chain: LocalChain, facilitator_account: LocalAccount
) -> Iterator[LocalFacilitator]:
    """A :class:`~x402gate.facilitators.LocalFacilitator` settling on ``chain`` with
    ``facilitator_account``; closed after the test (its threads and RPC connections)."""
    from ..facilitators import LocalFacilitator

    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    try:
        yield facilitator
    finally:
        facilitator.close()
