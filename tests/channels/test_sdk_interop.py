"""The official x402 Python SDK (``x402.mechanisms.evm.batch_settlement``) against our escrow.

The SDK hard-codes the canonical addresses and the EIP-712 types; these tests prove that what it
computes and signs is what our contracts compute and accept: channel ids, vouchers, claim
batches, refunds and deposit authorizations, and then the official client and facilitator
running a whole channel (deposit, vouchers, claim, settle, refund) on the local chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from x402gate.testing.channels import ChannelState

from . import DEPOSIT, Parties, make_parties

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402 import PaymentRequirements

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelConfig, ChannelContracts

PRICE = 1_000


@pytest.fixture
def parties(chain: LocalChain, test_token: TestToken) -> Parties:
    return make_parties(chain, test_token)


def sdk_config(config: ChannelConfig) -> Any:
    """Our config as the SDK's ``ChannelConfig``."""
    from x402.mechanisms.evm.batch_settlement import ChannelConfig as SdkChannelConfig

    return SdkChannelConfig(
        payer=config.payer,
        payer_authorizer=config.payer_authorizer,
        receiver=config.receiver,
        receiver_authorizer=config.receiver_authorizer,
        token=config.token,
        withdraw_delay=config.withdraw_delay,
        salt="0x" + config.salt.hex(),
    )


def requirements_for(
    chain: LocalChain, token: TestToken, parties: Parties, amount: int = PRICE
) -> PaymentRequirements:
    from x402 import PaymentRequirements

    return PaymentRequirements(
        scheme="batch-settlement",
        network=chain.network,
        asset=token.address,
        amount=str(amount),
        pay_to=parties.receiver.address,
        max_timeout_seconds=300,
        extra={
            "receiverAuthorizer": parties.receiver_authorizer.address,
            "withdrawDelay": parties.config.withdraw_delay,
            "name": token.name,
            "version": token.version,
        },
    )


def signer_of(account: LocalAccount) -> Any:
    from x402.mechanisms.evm.signers import EthAccountSigner

    return EthAccountSigner(account)


def test_channel_id_matches_the_sdk(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties
) -> None:
    from x402.mechanisms.evm.batch_settlement import compute_channel_id

    sdk_id = compute_channel_id(sdk_config(parties.config), chain.network)
    ours = channel_contracts.channel_id(parties.config)
    on_chain = channel_contracts.settlement.functions.getChannelId(parties.config.as_tuple()).call()
    assert bytes.fromhex(sdk_id.removeprefix("0x")) == ours == on_chain


def test_sdk_voucher_refund_and_claim_digests_match(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties
) -> None:
    """Signatures made by the SDK recover to their signer over the digests the contract
    computes (``getVoucherDigest``, ``getRefundDigest``, ``getClaimBatchDigest``)."""
    from eth_account import Account
    from x402.mechanisms.evm.batch_settlement import VoucherClaim as SdkVoucherClaim
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
        LocalAuthorizerSigner,
        sign_claim_batch,
        sign_refund,
    )
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher

    functions = channel_contracts.settlement.functions
    channel_id = channel_contracts.channel_id(parties.config)
    hex_id = "0x" + channel_id.hex()

    voucher = sign_voucher(signer_of(parties.payer_authorizer), hex_id, 12_345, chain.network)
    digest = functions.getVoucherDigest(channel_id, 12_345).call()
    assert digest == channel_contracts.voucher_digest(channel_id, 12_345)
    assert Account._recover_hash(digest, signature=voucher.signature) == (
        parties.payer_authorizer.address
    )

    authorizer = LocalAuthorizerSigner(parties.receiver_authorizer)
    refund_signature = sign_refund(authorizer, hex_id, 777, 3, chain.network)
    digest = functions.getRefundDigest(channel_id, 3, 777).call()
    assert Account._recover_hash(digest, signature=refund_signature) == authorizer.address

    claims = [
        SdkVoucherClaim(
            channel=sdk_config(parties.config),
            max_claimable_amount="12345",
            signature=voucher.signature,
            total_claimed="12000",
        )
    ]
    claim_signature = sign_claim_batch(authorizer, claims, chain.network)
    ours = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 12_345, 12_000)
    digest = functions.getClaimBatchDigest([ours.as_tuple()]).call()
    assert digest == channel_contracts.claim_batch_digest([ours])
    assert Account._recover_hash(digest, signature=claim_signature) == authorizer.address


def test_sdk_signed_voucher_and_claim_batch_are_accepted(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
) -> None:
    """The strongest proof: the SDK's client signs a voucher, the SDK's authorizer signs the
    batch, the SDK's facilitator code builds the arguments, and our ``claimWithSignature``
    accepts them."""
    from x402.mechanisms.evm.batch_settlement import VoucherClaim as SdkVoucherClaim
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
        LocalAuthorizerSigner,
        sign_claim_batch,
        sign_refund,
    )
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.batch_settlement.facilitator.claim import build_voucher_claim_args
    from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config

    channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    channel_id = channel_contracts.channel_id(parties.config)
    hex_id = "0x" + channel_id.hex()
    voucher = sign_voucher(signer_of(parties.payer_authorizer), hex_id, 4_000, chain.network)
    claims = [
        SdkVoucherClaim(
            channel=sdk_config(parties.config),
            max_claimable_amount=voucher.max_claimable_amount,
            signature=voucher.signature,
            total_claimed="3500",
        )
    ]
    authorizer = LocalAuthorizerSigner(parties.receiver_authorizer)
    signature = sign_claim_batch(authorizer, claims, chain.network)
    functions = channel_contracts.settlement.functions
    chain.transact(
        parties.relayer,
        functions.claimWithSignature(
            build_voucher_claim_args(claims), bytes.fromhex(signature.removeprefix("0x"))
        ),
    )
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT, 3_500)

    refund_signature = sign_refund(authorizer, hex_id, 1_500, 0, chain.network)
    before = test_token.balance_of(parties.payer.address)
    chain.transact(
        parties.relayer,
        functions.refundWithSignature(
            to_contract_channel_config(sdk_config(parties.config)),
            1_500,
            0,
            bytes.fromhex(refund_signature.removeprefix("0x")),
        ),
    )
    assert test_token.balance_of(parties.payer.address) == before + 1_500
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT - 1_500, 3_500)


def test_sdk_deposit_authorization_is_collected(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
) -> None:
    """The official client's EIP-3009 deposit, encoded by the facilitator code, funds the
    channel through our collector."""
    from x402.mechanisms.evm.batch_settlement.client.eip3009 import (
        create_batch_settlement_eip3009_deposit_payload,
    )
    from x402.mechanisms.evm.batch_settlement.facilitator.deposit_eip3009 import (
        build_eip3009_deposit_collector_data,
        get_eip3009_deposit_collector_address,
    )
    from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config

    requirements = requirements_for(chain, test_token, parties)
    payload = create_batch_settlement_eip3009_deposit_payload(
        signer_of(parties.payer), requirements, sdk_config(parties.config), DEPOSIT, PRICE
    )
    collector = get_eip3009_deposit_collector_address()
    assert collector == channel_contracts.collector.address
    data = build_eip3009_deposit_collector_data(payload)
    chain.transact(
        parties.relayer,
        channel_contracts.settlement.functions.deposit(
            to_contract_channel_config(sdk_config(parties.config)), DEPOSIT, collector, data
        ),
    )
    channel_id = channel_contracts.channel_id(parties.config)
    assert payload.voucher is not None
    assert payload.voucher.channel_id.lower() == "0x" + channel_id.hex()
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT, 0)


def test_official_client_and_facilitator_run_a_channel(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    facilitator_account: LocalAccount,
) -> None:
    """The official client pays by deposit then vouchers; the official facilitator verifies
    and settles every step on our contracts, with its own key as the receiver authorizer."""
    from x402 import PaymentPayload
    from x402.mechanisms.evm.batch_settlement import (
        ClaimPayload,
        EnrichedRefundPayload,
        SettlePayload,
        VoucherClaim,
    )
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator
    from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

    parties = make_parties(chain, test_token)
    authorizer_key = parties.receiver_authorizer
    facilitator = BatchSettlementEvmFacilitator(
        FacilitatorWeb3Signer(
            facilitator_account.key.hex(), chain.rpc_url, confirmation_timeout_seconds=10
        ),
        authorizer_signer=LocalAuthorizerSigner(authorizer_key),
    )
    requirements = requirements_for(chain, test_token, parties)
    requirements.extra["minDeposit"] = str(DEPOSIT)
    client = BatchSettlementEvmScheme(signer_of(parties.payer))

    # 1. Deposit with the first voucher.
    inner = client.create_payment_payload(requirements)
    assert inner["type"] == "deposit"
    payload = PaymentPayload(x402_version=2, accepted=requirements, payload=inner)
    verified = facilitator.verify(payload, requirements)
    assert verified.is_valid, verified.invalid_reason
    settled = facilitator.settle(payload, requirements)
    assert settled.success, (settled.error_reason, settled.error_message)
    config_dict = inner["channelConfig"]
    channel_id = bytes.fromhex(inner["voucher"]["channelId"].removeprefix("0x"))
    deposited = int(inner["deposit"]["amount"])
    assert channel_contracts.channel(channel_id) == ChannelState(deposited, 0)

    # 2. Further vouchers, as the client signs them after each charged request.
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher

    vouchers = []
    for step in range(1, 4):
        voucher = sign_voucher(
            signer_of(parties.payer), "0x" + channel_id.hex(), step * PRICE, chain.network
        )
        voucher_payload = PaymentPayload(
            x402_version=2,
            accepted=requirements,
            payload={"type": "voucher", "channelConfig": config_dict, **_voucher_dict(voucher)},
        )
        verified = facilitator.verify(voucher_payload, requirements)
        assert verified.is_valid, verified.invalid_reason
        vouchers.append(voucher)

    # 3. Claim the last voucher, then settle to the receiver.
    last = vouchers[-1]
    from x402.mechanisms.evm.batch_settlement import ChannelConfig as SdkChannelConfig

    claim = ClaimPayload(
        claims=[
            VoucherClaim(
                channel=SdkChannelConfig.from_dict(config_dict),
                max_claimable_amount=last.max_claimable_amount,
                signature=last.signature,
                total_claimed=last.max_claimable_amount,
            )
        ]
    )
    claim_payload = PaymentPayload(x402_version=2, accepted=requirements, payload=claim.to_dict())
    claimed = facilitator.settle(claim_payload, requirements)
    assert claimed.success, (claimed.error_reason, claimed.error_message)
    assert channel_contracts.channel(channel_id) == ChannelState(deposited, 3 * PRICE)

    sweep = SettlePayload(receiver=parties.receiver.address, token=test_token.address)
    sweep_payload = PaymentPayload(x402_version=2, accepted=requirements, payload=sweep.to_dict())
    swept = facilitator.settle(sweep_payload, requirements)
    assert swept.success, (swept.error_reason, swept.error_message)
    assert test_token.balance_of(parties.receiver.address) == 3 * PRICE

    # 4. A cooperative refund of the rest after one more voucher: claim and refund in one
    #    multicall, both signed by the facilitator's authorizer key.
    final = sign_voucher(
        signer_of(parties.payer), "0x" + channel_id.hex(), 4 * PRICE, chain.network
    )
    rest = deposited - 4 * PRICE
    refund = EnrichedRefundPayload(
        channel_config=SdkChannelConfig.from_dict(config_dict),
        voucher=final,
        amount=str(rest),
        refund_nonce="0",
        claims=[
            VoucherClaim(
                channel=SdkChannelConfig.from_dict(config_dict),
                max_claimable_amount=final.max_claimable_amount,
                signature=final.signature,
                total_claimed=final.max_claimable_amount,
            )
        ],
    )
    before = test_token.balance_of(parties.payer.address)
    refund_payload = PaymentPayload(x402_version=2, accepted=requirements, payload=refund.to_dict())
    refunded = facilitator.settle(refund_payload, requirements)
    assert refunded.success, (refunded.error_reason, refunded.error_message)
    assert test_token.balance_of(parties.payer.address) == before + rest
    assert channel_contracts.channel(channel_id) == ChannelState(4 * PRICE, 4 * PRICE)
    assert channel_contracts.refund_nonce(channel_id) == 1

    # 5. A voucher above the channel balance is refused by the facilitator.
    greedy = sign_voucher(
        signer_of(parties.payer), "0x" + channel_id.hex(), deposited + PRICE, chain.network
    )
    greedy_payload = PaymentPayload(
        x402_version=2,
        accepted=requirements,
        payload={"type": "voucher", "channelConfig": config_dict, **_voucher_dict(greedy)},
    )
    verified = facilitator.verify(greedy_payload, requirements)
    assert not verified.is_valid
    assert verified.invalid_reason == "invalid_batch_settlement_evm_cumulative_exceeds_balance"

    # 6. So is one signed by another key than the payer authorizer.
    forged = sign_voucher(
        signer_of(parties.relayer), "0x" + channel_id.hex(), 5 * PRICE, chain.network
    )
    forged_payload = PaymentPayload(
        x402_version=2,
        accepted=requirements,
        payload={"type": "voucher", "channelConfig": config_dict, **_voucher_dict(forged)},
    )
    verified = facilitator.verify(forged_payload, requirements)
    assert not verified.is_valid
    assert verified.invalid_reason == "invalid_batch_settlement_evm_voucher_signature"


def _voucher_dict(voucher: Any) -> dict[str, Any]:
    return {"voucher": voucher.to_dict()}
