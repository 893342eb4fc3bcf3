"""Tests of payment channels (x402 ``batch-settlement``), starting with the local chain's escrow.

:class:`Parties` gathers the accounts of one channel so each test states only what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelConfig

__all__ = ["DEPOSIT", "Parties", "make_parties"]

DEPOSIT = 10_000_000
"""What a test channel is opened with: 10 test USDC."""


@dataclass(frozen=True)
class Parties:
    """The accounts around one channel and its config.

    The payer holds tokens and no ETH (deposits are gasless for it); the payer authorizer
    signs vouchers; the receiver and its authorizer can send transactions; the relayer is a
    stranger with gas who submits signed messages.
    """

    payer: LocalAccount
    payer_authorizer: LocalAccount
    receiver: LocalAccount
    receiver_authorizer: LocalAccount
    relayer: LocalAccount
    config: ChannelConfig


def make_parties(
    chain: LocalChain,
    token: TestToken,
    *,
    withdraw_delay: int = 900,
    separate_payer_authorizer: bool = False,
) -> Parties:
    """Fresh accounts and a channel config between them (payer funded with 100 test USDC)."""
    from x402gate.testing.channels import ChannelConfig

    payer = chain.new_account(eth_wei=10**18, token=token, token_amount=100_000_000)
    payer_authorizer = chain.new_account() if separate_payer_authorizer else payer
    receiver = chain.new_account()
    receiver_authorizer = chain.new_account()
    relayer = chain.new_account()
    config = ChannelConfig.new(
        payer.address,
        receiver.address,
        receiver_authorizer.address,
        token.address,
        payer_authorizer=payer_authorizer.address,
        withdraw_delay=withdraw_delay,
    )
    return Parties(payer, payer_authorizer, receiver, receiver_authorizer, relayer, config)
