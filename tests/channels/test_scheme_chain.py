"""The ``batch-settlement`` scheme's local verification against our escrow on the local chain.

What :class:`~x402gate.schemes.batch_settlement.BatchSettlementScheme` computes offline must be
what the contract computes (channel ids, voucher digests), and a voucher it accepts must be one
the receiver can claim: the official client's deposit is collected, its vouchers pass our checks
against the channel read from the chain, and the last one is claimed on chain.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from x402gate.assets import Asset
from x402gate.errors import PaymentError
from x402gate.schemes.batch_settlement import (
    BatchSettlementScheme,
    ChannelView,
    check_channel,
    codes,
    digest,
)
from x402gate.testing.channels import ChannelConfig as KitConfig
from x402gate.testing.channels import ChannelState, VoucherClaim

from . import Parties, make_parties

if TYPE_CHECKING:
    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

PRICE = 1_000
DEPOSIT = 50_000


@pytest.fixture
def parties(chain: LocalChain, test_token: TestToken) -> Parties:
    return make_parties(chain, test_token)


class _NoFacilitator:
    async def verify(self, *args: Any) -> Any:  # pragma: no cover
        raise AssertionError

    async def settle(self, *args: Any) -> Any:  # pragma: no cover
        raise AssertionError


def test_digests_match_the_contract(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties
) -> None:
    from x402gate.schemes.batch_settlement import ChannelConfig

    config = parties.config
    ours = ChannelConfig(
        payer=bytes.fromhex(config.payer[2:]),
        payer_authorizer=bytes.fromhex(config.payer_authorizer[2:]),
        receiver=bytes.fromhex(config.receiver[2:]),
        receiver_authorizer=bytes.fromhex(config.receiver_authorizer[2:]),
        token=bytes.fromhex(config.token[2:]),
        withdraw_delay=config.withdraw_delay,
        salt=config.salt,
    )
    functions = channel_contracts.settlement.functions
    channel_id = digest.channel_id(ours, chain.chain_id)
    assert channel_id == functions.getChannelId(config.as_tuple()).call()
    for amount in (0, 1, 12_345, 2**128 - 1):
        expected = functions.getVoucherDigest(channel_id, amount).call()
        assert digest.voucher_digest(channel_id, amount, chain.chain_id) == expected


def test_vouchers_we_accept_are_claimable(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
) -> None:
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.batch_settlement.facilitator.deposit_eip3009 import (
        build_eip3009_deposit_collector_data,
        get_eip3009_deposit_collector_address,
    )
    from x402.mechanisms.evm.batch_settlement.types import DepositPayload
    from x402.mechanisms.evm.signers import EthAccountSigner

    scheme = BatchSettlementScheme(
        _NoFacilitator(),  # type: ignore[arg-type]
        receiver_authorizer=parties.receiver_authorizer.address,
        withdraw_delay=parties.config.withdraw_delay,
        min_deposit=DEPOSIT,
    )
    asset = Asset(chain.network, test_token.address, test_token.name, test_token.version)
    requirements = scheme.requirements(asset, PRICE, parties.receiver.address, 300)

    # The official client's first payment: a deposit our checks accept, then collected on chain.
    inner = BatchSettlementEvmScheme(EthAccountSigner(parties.payer)).create_payment_payload(
        requirements
    )
    auth = scheme.check(inner, requirements, now=chain.timestamp())
    assert auth.kind == "deposit" and auth.recovered and auth.deposit is not None
    collector = get_eip3009_deposit_collector_address()
    chain.transact(
        parties.relayer,
        channel_contracts.settlement.functions.deposit(
            _testkit_config(inner).as_tuple(),
            auth.deposit.amount,
            collector,
            build_eip3009_deposit_collector_data(DepositPayload.from_dict(inner)),
        ),
    )
    on_chain = channel_contracts.channel(auth.channel_id)
    assert on_chain == ChannelState(auth.deposit.amount, 0)

    # Vouchers, checked against the channel as read from the chain.
    signer = EthAccountSigner(parties.payer)
    charged = PRICE  # the deposit's request was charged in full
    for _ in range(3):
        voucher = sign_voucher(signer, auth.channel_id, charged + PRICE, chain.network)
        payload = {
            "type": "voucher",
            "channelConfig": inner["channelConfig"],
            "voucher": voucher.to_dict(),
        }
        checked = scheme.check(payload, requirements, now=time.time())
        view = ChannelView(auth.channel_id, on_chain.balance, on_chain.total_claimed, charged)
        assert check_channel(checked, view) == PRICE
        charged += PRICE

    # The last accepted voucher is claimed by the receiver.
    ours = _testkit_config(inner)
    row = VoucherClaim(ours, checked.max_claimable_amount, checked.signature, charged)
    chain.transact(parties.receiver, channel_contracts.settlement.functions.claim([row.as_tuple()]))
    on_chain = channel_contracts.channel(auth.channel_id)
    assert on_chain == ChannelState(auth.deposit.amount, charged)

    # Now a voucher not above the claimed total is refused here as the contract would.
    stale = sign_voucher(signer, auth.channel_id, charged, chain.network)
    payload = {
        "type": "voucher",
        "channelConfig": inner["channelConfig"],
        "voucher": stale.to_dict(),
    }
    checked = scheme.check(payload, requirements, now=time.time())
    view = ChannelView(auth.channel_id, on_chain.balance, on_chain.total_claimed, charged - PRICE)
    with pytest.raises(PaymentError) as caught:
        check_channel(checked, view)
    assert caught.value.code == codes.CUMULATIVE_BELOW_CLAIMED


def _testkit_config(inner: dict[str, Any]) -> KitConfig:
    raw = inner["channelConfig"]
    return KitConfig(
        payer=raw["payer"],
        payer_authorizer=raw["payerAuthorizer"],
        receiver=raw["receiver"],
        receiver_authorizer=raw["receiverAuthorizer"],
        token=raw["token"],
        withdraw_delay=raw["withdrawDelay"],
        salt=bytes.fromhex(raw["salt"][2:]),
    )
