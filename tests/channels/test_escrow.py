"""The batch-settlement escrow and EIP-3009 collector on a real anvil, placed at the canonical
addresses: deposit, claim, claim with signature, settle, refund, refund with signature, timed
withdrawal and its delay bounds.

Failures are checked by the contract's custom error (from an ``eth_call``), then, where it
matters, by sending the transaction and seeing nothing move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from x402gate.testing.channels import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    MULTICALL3_ADDRESS,
    ChannelConfig,
    ChannelState,
    PendingWithdrawal,
    ReceiverAccount,
    deploy_test_wallet,
    load_artifact,
)

from . import DEPOSIT, Parties, make_parties

if TYPE_CHECKING:
    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts


@pytest.fixture
def parties(chain: LocalChain, test_token: TestToken) -> Parties:
    return make_parties(chain, test_token)


@pytest.fixture
def opened(channel_contracts: ChannelContracts, test_token: TestToken, parties: Parties) -> bytes:
    """The parties' channel, funded with ``DEPOSIT``; returns its id."""
    channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    return channel_contracts.channel_id(parties.config)


def custom_error(call: Any, sender: str) -> str:
    """The name of the custom error an ``eth_call`` of ``call`` reverts with."""
    from eth_hash.auto import keccak
    from web3.exceptions import ContractCustomError

    with pytest.raises(ContractCustomError) as info:
        call.call({"from": sender})
    data = str(info.value.data).removeprefix("0x")
    names: dict[str, str] = {}
    for artifact in ("BatchSettlement", "ERC3009DepositCollector"):
        for item in load_artifact(artifact)["abi"]:
            if item["type"] == "error":
                signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                names[keccak(signature.encode())[:4].hex()] = item["name"]
    return names.get(data[:8], f"unknown error 0x{data[:8]}")


def revert_message(call: Any, sender: str) -> str:
    """The message of an ``eth_call`` that reverts with a string (the token's errors)."""
    from web3.exceptions import ContractLogicError

    with pytest.raises(ContractLogicError) as info:
        call.call({"from": sender})
    return str(info.value)


def increase_time(chain: LocalChain, seconds: int) -> None:
    chain.rpc("evm_increaseTime", [seconds])
    chain.rpc("evm_mine")


# ------------------------------------------------------------------------------ placement


def test_code_at_canonical_addresses(
    chain: LocalChain, channel_contracts: ChannelContracts
) -> None:
    for name, address in (
        ("BatchSettlement", BATCH_SETTLEMENT_ADDRESS),
        ("ERC3009DepositCollector", ERC3009_DEPOSIT_COLLECTOR_ADDRESS),
        ("Multicall", MULTICALL3_ADDRESS),
    ):
        code = chain.rpc("eth_getCode", [address, "latest"])
        assert code == load_artifact(name)["deployedBytecode"]
    collector = channel_contracts.collector.functions
    assert collector.SETTLEMENT().call() == BATCH_SETTLEMENT_ADDRESS
    settlement = channel_contracts.settlement.functions
    assert settlement.MIN_WITHDRAW_DELAY().call() == MIN_WITHDRAW_DELAY
    assert settlement.MAX_WITHDRAW_DELAY().call() == MAX_WITHDRAW_DELAY


def test_domain_separator_is_computed_from_the_address(
    channel_contracts: ChannelContracts,
) -> None:
    """The escrow has no constructor state: its domain binds the canonical address it runs at."""
    from eth_account.messages import encode_typed_data

    expected = encode_typed_data(
        domain_data=channel_contracts.domain,
        message_types={"Voucher": [{"name": "channelId", "type": "bytes32"}]},
        message_data={"channelId": b"\x00" * 32},
    ).header
    assert channel_contracts.settlement.functions.DOMAIN_SEPARATOR().call() == expected


def test_channel_id_and_digests_match_the_contract(
    channel_contracts: ChannelContracts, parties: Parties
) -> None:
    functions = channel_contracts.settlement.functions
    channel_id = channel_contracts.channel_id(parties.config)
    assert functions.getChannelId(parties.config.as_tuple()).call() == channel_id
    # Another salt is another channel.
    other = ChannelConfig.new(
        parties.payer.address,
        parties.receiver.address,
        parties.receiver_authorizer.address,
        parties.config.token,
    )
    assert channel_contracts.channel_id(other) != channel_id


def test_artifacts_carry_runtime_code_from_the_pinned_compiler() -> None:
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    pinned = json.loads((repo / "package.json").read_text())["devDependencies"]["solc"]
    for name in ("BatchSettlement", "ERC3009DepositCollector", "Multicall"):
        # Placed with anvil_setCode, so they carry their runtime code.
        artifact = load_artifact(name)
        assert list(artifact) == ["compiler", "evmVersion", "abi", "bytecode", "deployedBytecode"]
        assert artifact["compiler"].startswith(f"solc {pinned}+commit.")
        assert artifact["evmVersion"] == "cancun"
        # No immutables: the runtime code is a suffix of the creation code, unchanged.
        assert artifact["deployedBytecode"].removeprefix("0x") in artifact["bytecode"]
    names = {item.get("name") for item in load_artifact("BatchSettlement")["abi"]}
    assert {
        "deposit",
        "claim",
        "claimWithSignature",
        "settle",
        "refund",
        "refundWithSignature",
        "initiateWithdraw",
        "finalizeWithdraw",
        "multicall",
        "channels",
        "pendingWithdrawals",
        "receivers",
        "refundNonce",
        "getChannelId",
        "getVoucherDigest",
        "getRefundDigest",
        "getClaimBatchDigest",
        "Settled",
    } <= names


# ------------------------------------------------------------------------------ deposit


def test_deposit_through_the_collector(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
) -> None:
    from eth_abi.abi import decode, encode
    from eth_hash.auto import keccak

    channel_id = channel_contracts.channel_id(parties.config)
    data = channel_contracts.deposit_collector_data(
        parties.payer, test_token, parties.config, DEPOSIT
    )
    receipt = channel_contracts.deposit(parties.relayer, parties.config, DEPOSIT, data)

    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT, 0)
    assert test_token.balance_of(BATCH_SETTLEMENT_ADDRESS) == DEPOSIT
    assert test_token.balance_of(ERC3009_DEPOSIT_COLLECTOR_ADDRESS) == 0
    assert test_token.balance_of(parties.payer.address) == 100_000_000 - DEPOSIT
    created = channel_contracts.events(receipt, "ChannelCreated")
    assert [event["channelId"] for event in created] == [channel_id]
    [deposited] = channel_contracts.events(receipt, "Deposited")
    assert deposited == {
        "channelId": channel_id,
        "sender": parties.relayer.address,
        "amount": DEPOSIT,
        "balance": DEPOSIT,
    }
    # The EIP-3009 nonce binds the authorization to this channel: keccak256(channelId, salt).
    _, _, salt, _ = decode(["uint256", "uint256", "uint256", "bytes"], data)
    nonce = keccak(encode(["bytes32", "uint256"], [channel_id, salt]))
    assert test_token.authorization_state(parties.payer.address, nonce)

    # A top-up adds to the balance and creates nothing.
    receipt = channel_contracts.open_channel(parties.payer, test_token, parties.config, 5)
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT + 5, 0)
    assert channel_contracts.events(receipt, "ChannelCreated") == []


def test_a_deposit_authorization_is_used_once(
    channel_contracts: ChannelContracts, test_token: TestToken, parties: Parties
) -> None:
    data = channel_contracts.deposit_collector_data(
        parties.payer, test_token, parties.config, DEPOSIT
    )
    channel_contracts.deposit(parties.relayer, parties.config, DEPOSIT, data)
    call = channel_contracts.settlement.functions.deposit(
        parties.config.as_tuple(), DEPOSIT, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data
    )
    assert "authorization is used or canceled" in revert_message(call, parties.relayer.address)
    receipt = channel_contracts.deposit(
        parties.relayer, parties.config, DEPOSIT, data, require_success=False
    )
    assert receipt["status"] == 0
    channel_id = channel_contracts.channel_id(parties.config)
    assert channel_contracts.channel(channel_id).balance == DEPOSIT


def test_a_deposit_authorization_funds_only_its_channel(
    channel_contracts: ChannelContracts, test_token: TestToken, parties: Parties
) -> None:
    """Submitted for another channel of the same payer, the nonce differs: invalid signature."""
    from dataclasses import replace

    data = channel_contracts.deposit_collector_data(
        parties.payer, test_token, parties.config, DEPOSIT
    )
    other = replace(parties.config, receiver=parties.relayer.address)
    call = channel_contracts.settlement.functions.deposit(
        other.as_tuple(), DEPOSIT, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data
    )
    assert "invalid signature" in revert_message(call, parties.relayer.address)
    # Nor for a larger amount than signed.
    call = channel_contracts.settlement.functions.deposit(
        parties.config.as_tuple(), DEPOSIT + 1, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data
    )
    assert "invalid signature" in revert_message(call, parties.relayer.address)


def test_only_the_escrow_calls_the_collector(
    channel_contracts: ChannelContracts, test_token: TestToken, parties: Parties
) -> None:
    data = channel_contracts.deposit_collector_data(
        parties.payer, test_token, parties.config, DEPOSIT
    )
    channel_id = channel_contracts.channel_id(parties.config)
    call = channel_contracts.collector.functions.collect(
        parties.payer.address, test_token.address, DEPOSIT, channel_id, data
    )
    assert custom_error(call, parties.relayer.address) == "CallerNotSettlement"


def test_deposit_refuses_a_bad_config_or_zero(
    channel_contracts: ChannelContracts, test_token: TestToken, parties: Parties
) -> None:
    from dataclasses import replace

    deposit = channel_contracts.settlement.functions.deposit
    zero = "0x" + "00" * 20
    sender = parties.relayer.address
    for bad in (
        replace(parties.config, receiver_authorizer=zero),
        replace(parties.config, receiver=zero),
        replace(parties.config, payer=zero),
    ):
        call = deposit(bad.as_tuple(), 1, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, b"")
        assert custom_error(call, sender) == "InvalidChannelConfig"
    call = deposit(parties.config.as_tuple(), 0, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, b"")
    assert custom_error(call, sender) == "ZeroAmount"


@pytest.mark.parametrize(
    ("delay", "accepted"),
    [
        (0, False),
        (MIN_WITHDRAW_DELAY - 1, False),
        (MIN_WITHDRAW_DELAY, True),
        (86_400, True),
        (MAX_WITHDRAW_DELAY, True),
        (MAX_WITHDRAW_DELAY + 1, False),
    ],
)
def test_withdraw_delay_bounds(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    delay: int,
    accepted: bool,
) -> None:
    """A channel can only be funded with a withdraw delay of 15 minutes to 30 days."""
    parties = make_parties(chain, test_token, withdraw_delay=delay)
    data = channel_contracts.deposit_collector_data(
        parties.payer, test_token, parties.config, DEPOSIT
    )
    channel_id = channel_contracts.channel_id(parties.config)
    if accepted:
        channel_contracts.deposit(parties.relayer, parties.config, DEPOSIT, data)
        assert channel_contracts.channel(channel_id).balance == DEPOSIT
    else:
        call = channel_contracts.settlement.functions.deposit(
            parties.config.as_tuple(), DEPOSIT, ERC3009_DEPOSIT_COLLECTOR_ADDRESS, data
        )
        assert custom_error(call, parties.relayer.address) == "WithdrawDelayOutOfRange"
        receipt = channel_contracts.deposit(
            parties.relayer, parties.config, DEPOSIT, data, require_success=False
        )
        assert receipt["status"] == 0
        assert channel_contracts.channel(channel_id).balance == 0
        assert test_token.balance_of(parties.payer.address) == 100_000_000


# ------------------------------------------------------------------------------ claim


def test_claim_by_the_receiver(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties, opened: bytes
) -> None:
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 3_000)
    receipt = chain.transact(
        parties.receiver, channel_contracts.settlement.functions.claim([row.as_tuple()])
    )
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT, 3_000)
    account = channel_contracts.receiver_account(parties.receiver.address, parties.config.token)
    assert account == ReceiverAccount(3_000, 0)
    [claimed] = channel_contracts.events(receipt, "Claimed")
    assert claimed["amount"] == 3_000
    assert claimed["totalClaimed"] == 3_000

    # Cumulative: the next voucher claims only the difference; an old one changes nothing.
    row2 = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 5_000, 4_200)
    chain.transact(
        parties.receiver_authorizer,
        channel_contracts.settlement.functions.claim([row2.as_tuple(), row.as_tuple()]),
    )
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT, 4_200)
    account = channel_contracts.receiver_account(parties.receiver.address, parties.config.token)
    assert account.total_claimed == 4_200


def test_claim_refusals(
    channel_contracts: ChannelContracts, parties: Parties, opened: bytes
) -> None:
    claim = channel_contracts.settlement.functions.claim
    receiver = parties.receiver.address
    good = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 3_000)
    # Not the receiver side.
    assert custom_error(claim([good.as_tuple()]), parties.relayer.address) == "NotReceiverSide"
    # More than the voucher allows.
    over = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 3_000, 3_001)
    assert custom_error(claim([over.as_tuple()]), receiver) == "ClaimAboveVoucher"
    # More than the channel holds.
    big = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, DEPOSIT + 1)
    assert custom_error(claim([big.as_tuple()]), receiver) == "ClaimAboveBalance"
    # A voucher signed by someone else than the payer authorizer.
    forged = channel_contracts.voucher_claim(parties.relayer, parties.config, 3_000)
    assert custom_error(claim([forged.as_tuple()]), receiver) == "InvalidVoucherSignature"
    # A signature for a smaller ceiling does not cover a larger one.
    from dataclasses import replace

    stretched = replace(good, max_claimable_amount=4_000, total_claimed=4_000)
    assert custom_error(claim([stretched.as_tuple()]), receiver) == "InvalidVoucherSignature"
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT, 0)


def test_claim_with_signature_relayed_by_anyone(
    chain: LocalChain, channel_contracts: ChannelContracts, test_token: TestToken
) -> None:
    """One authorizer signature covers rows of several channels and receivers."""
    first = make_parties(chain, test_token)
    second = make_parties(chain, test_token)
    from dataclasses import replace

    # The second channel shares the first one's receiver authorizer.
    second = replace(
        second,
        receiver_authorizer=first.receiver_authorizer,
        config=replace(second.config, receiver_authorizer=first.receiver_authorizer.address),
    )
    for parties in (first, second):
        channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    rows = [
        channel_contracts.voucher_claim(first.payer_authorizer, first.config, 1_000),
        channel_contracts.voucher_claim(second.payer_authorizer, second.config, 2_000, 1_500),
    ]
    signature = channel_contracts.sign_claim_batch(first.receiver_authorizer, rows)
    functions = channel_contracts.settlement.functions
    tuples = [row.as_tuple() for row in rows]
    assert functions.getClaimBatchDigest(tuples).call() == channel_contracts.claim_batch_digest(
        rows
    )

    # A wrong signer, or a signature over other rows, is refused.
    wrong = channel_contracts.sign_claim_batch(first.relayer, rows)
    relayer = first.relayer.address
    assert custom_error(functions.claimWithSignature(tuples, wrong), relayer) == (
        "InvalidAuthorizerSignature"
    )
    other_rows = [replace(rows[0], total_claimed=900), rows[1]]
    other = [row.as_tuple() for row in other_rows]
    assert custom_error(functions.claimWithSignature(other, signature), relayer) == (
        "InvalidAuthorizerSignature"
    )
    assert custom_error(functions.claimWithSignature([], signature), relayer) == ("EmptyClaimBatch")

    chain.transact(first.relayer, functions.claimWithSignature(tuples, signature))
    assert channel_contracts.channel(channel_contracts.channel_id(first.config)).total_claimed == (
        1_000
    )
    assert channel_contracts.channel(channel_contracts.channel_id(second.config)).total_claimed == (
        1_500
    )


def test_claim_with_signature_needs_one_authorizer(
    chain: LocalChain, channel_contracts: ChannelContracts, test_token: TestToken
) -> None:
    first = make_parties(chain, test_token)
    second = make_parties(chain, test_token)
    for parties in (first, second):
        channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    rows = [
        channel_contracts.voucher_claim(first.payer_authorizer, first.config, 1_000),
        channel_contracts.voucher_claim(second.payer_authorizer, second.config, 1_000),
    ]
    signature = channel_contracts.sign_claim_batch(first.receiver_authorizer, rows)
    call = channel_contracts.settlement.functions.claimWithSignature(
        [row.as_tuple() for row in rows], signature
    )
    assert custom_error(call, first.relayer.address) == "AuthorizerMismatch"


def test_vouchers_come_from_the_payer_authorizer_only(
    chain: LocalChain, channel_contracts: ChannelContracts, test_token: TestToken
) -> None:
    """With a payer authorizer, the payer's own signature is not a voucher (ECDSA against the
    committed key only); without one, the payer signs."""
    from dataclasses import replace

    parties = make_parties(chain, test_token, separate_payer_authorizer=True)
    channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    claim = channel_contracts.settlement.functions.claim
    by_payer = channel_contracts.voucher_claim(parties.payer, parties.config, 1_000)
    assert custom_error(claim([by_payer.as_tuple()]), parties.receiver.address) == (
        "InvalidVoucherSignature"
    )
    by_authorizer = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 1_000)
    chain.transact(parties.receiver, claim([by_authorizer.as_tuple()]))

    zero = "0x" + "00" * 20
    open_config = replace(parties.config, payer_authorizer=zero, salt=b"\x01" * 32)
    channel_contracts.open_channel(parties.payer, test_token, open_config, DEPOSIT)
    by_other = channel_contracts.voucher_claim(parties.payer_authorizer, open_config, 1_000)
    assert custom_error(claim([by_other.as_tuple()]), parties.receiver.address) == (
        "InvalidVoucherSignature"
    )
    by_payer = channel_contracts.voucher_claim(parties.payer, open_config, 1_000)
    chain.transact(parties.receiver, claim([by_payer.as_tuple()]))
    assert channel_contracts.channel(channel_contracts.channel_id(open_config)).total_claimed == (
        1_000
    )


def test_a_smart_wallet_payer_signs_by_eip1271(
    chain: LocalChain, channel_contracts: ChannelContracts, test_token: TestToken
) -> None:
    """Without a payer authorizer, a contract payer's vouchers are checked with EIP-1271; the
    wallet deposits with EIP-3009 the same way and withdraws through its own calls."""
    owner = chain.new_account()
    wallet = deploy_test_wallet(chain, owner.address)
    test_token.mint(wallet.address, DEPOSIT)
    receiver, authorizer, stranger = chain.new_account(), chain.new_account(), chain.new_account()
    config = ChannelConfig.new(
        wallet.address,
        receiver.address,
        authorizer.address,
        test_token.address,
        payer_authorizer="0x" + "00" * 20,
    )
    channel_contracts.open_channel(owner, test_token, config, DEPOSIT)
    channel_id = channel_contracts.channel_id(config)
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT, 0)

    claim = channel_contracts.settlement.functions.claim
    forged = channel_contracts.voucher_claim(stranger, config, 1_000)
    assert custom_error(claim([forged.as_tuple()]), receiver.address) == "InvalidVoucherSignature"
    voucher = channel_contracts.voucher_claim(owner, config, 1_000)
    chain.transact(receiver, claim([voucher.as_tuple()]))
    assert channel_contracts.channel(channel_id) == ChannelState(DEPOSIT, 1_000)

    # The owner is not the payer: only the wallet itself may start a withdrawal.
    initiate = channel_contracts.settlement.functions.initiateWithdraw(config.as_tuple(), 500)
    assert custom_error(initiate, owner.address) == "NotPayerSide"
    calldata = initiate._encode_transaction_data()
    chain.transact(owner, wallet.functions.execute(channel_contracts.settlement.address, calldata))
    assert channel_contracts.pending_withdrawal(channel_id).amount == 500


def test_malleable_voucher_signature_is_refused(
    channel_contracts: ChannelContracts, parties: Parties, opened: bytes
) -> None:
    """The high-s twin of a valid signature (EIP-2) does not count."""
    from dataclasses import replace

    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 1_000)
    r, s, v = row.signature[:32], int.from_bytes(row.signature[32:64], "big"), row.signature[64]
    twin = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    call = channel_contracts.settlement.functions.claim([replace(row, signature=twin).as_tuple()])
    assert custom_error(call, parties.receiver.address) == "InvalidVoucherSignature"


# ------------------------------------------------------------------------------ settle


def test_settle_sweeps_claims_to_the_receiver(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    functions = channel_contracts.settlement.functions
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 7_000)
    chain.transact(parties.receiver, functions.claim([row.as_tuple()]))
    token = parties.config.token

    # Permissionless: a stranger settles, the tokens still go to the receiver.
    receipt = chain.transact(parties.relayer, functions.settle(parties.receiver.address, token))
    assert test_token.balance_of(parties.receiver.address) == 7_000
    assert test_token.balance_of(BATCH_SETTLEMENT_ADDRESS) == DEPOSIT - 7_000
    assert channel_contracts.receiver_account(parties.receiver.address, token) == (
        ReceiverAccount(7_000, 7_000)
    )
    [settled] = channel_contracts.events(receipt, "Settled")
    assert settled == {
        "receiver": parties.receiver.address,
        "token": token,
        "sender": parties.relayer.address,
        "amount": 7_000,
    }
    # The channel's accounting keeps the claimed amount in its balance.
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT, 7_000)

    # Nothing left: a no-op, no event, no transfer.
    receipt = chain.transact(parties.relayer, functions.settle(parties.receiver.address, token))
    assert channel_contracts.events(receipt, "Settled") == []
    assert test_token.balance_of(parties.receiver.address) == 7_000


# ------------------------------------------------------------------------------ refund


def test_refund_by_the_receiver_side(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    functions = channel_contracts.settlement.functions
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 2_000)
    chain.transact(parties.receiver, functions.claim([row.as_tuple()]))
    before = test_token.balance_of(parties.payer.address)

    call = functions.refund(parties.config.as_tuple(), 1_000)
    assert custom_error(call, parties.relayer.address) == "NotReceiverSide"
    assert custom_error(call, parties.payer.address) == "NotReceiverSide"

    receipt = chain.transact(parties.receiver, functions.refund(parties.config.as_tuple(), 1_000))
    assert test_token.balance_of(parties.payer.address) == before + 1_000
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT - 1_000, 2_000)
    assert channel_contracts.refund_nonce(opened) == 1
    [refunded] = channel_contracts.events(receipt, "Refunded")
    assert refunded["amount"] == 1_000
    assert channel_contracts.events(receipt, "ChannelClosed") == []

    # A refund larger than the unclaimed escrow returns only that, and leaves the claim.
    receipt = chain.transact(
        parties.receiver_authorizer, functions.refund(parties.config.as_tuple(), DEPOSIT)
    )
    available = DEPOSIT - 1_000 - 2_000
    assert test_token.balance_of(parties.payer.address) == before + 1_000 + available
    assert channel_contracts.channel(opened) == ChannelState(2_000, 2_000)
    assert len(channel_contracts.events(receipt, "ChannelClosed")) == 1
    # The claimed part is still the receiver's to settle.
    chain.transact(parties.relayer, functions.settle(parties.receiver.address, test_token.address))
    assert test_token.balance_of(parties.receiver.address) == 2_000
    assert test_token.balance_of(BATCH_SETTLEMENT_ADDRESS) == 0

    # With nothing left, a refund moves nothing but still advances the nonce.
    receipt = chain.transact(parties.receiver, functions.refund(parties.config.as_tuple(), 5))
    assert channel_contracts.events(receipt, "Refunded") == []
    assert channel_contracts.refund_nonce(opened) == 3


def test_refund_with_signature(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    functions = channel_contracts.settlement.functions
    config = parties.config.as_tuple()
    before = test_token.balance_of(parties.payer.address)
    signature = channel_contracts.sign_refund(parties.receiver_authorizer, opened, 0, 4_000)
    assert functions.getRefundDigest(opened, 0, 4_000).call() == channel_contracts.refund_digest(
        opened, 0, 4_000
    )

    relayer = parties.relayer.address
    # Wrong nonce, wrong amount, wrong signer.
    call = functions.refundWithSignature(config, 4_000, 1, signature)
    assert custom_error(call, relayer) == "RefundNonceMismatch"
    call = functions.refundWithSignature(config, 4_001, 0, signature)
    assert custom_error(call, relayer) == "InvalidAuthorizerSignature"
    by_receiver = channel_contracts.sign_refund(parties.receiver, opened, 0, 4_000)
    call = functions.refundWithSignature(config, 4_000, 0, by_receiver)
    assert custom_error(call, relayer) == "InvalidAuthorizerSignature"

    chain.transact(parties.relayer, functions.refundWithSignature(config, 4_000, 0, signature))
    assert test_token.balance_of(parties.payer.address) == before + 4_000
    assert channel_contracts.channel(opened) == ChannelState(DEPOSIT - 4_000, 0)
    assert channel_contracts.refund_nonce(opened) == 1
    # The same signature cannot be replayed: the nonce moved.
    call = functions.refundWithSignature(config, 4_000, 0, signature)
    assert custom_error(call, relayer) == "RefundNonceMismatch"


def test_a_drained_channel_is_created_again_on_top_up(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    functions = channel_contracts.settlement.functions
    receipt = chain.transact(parties.receiver, functions.refund(parties.config.as_tuple(), DEPOSIT))
    [closed] = channel_contracts.events(receipt, "ChannelClosed")
    assert closed["channelId"] == opened
    assert channel_contracts.channel(opened) == ChannelState(0, 0)
    receipt = channel_contracts.open_channel(parties.payer, test_token, parties.config, 10)
    assert len(channel_contracts.events(receipt, "ChannelCreated")) == 1
    assert channel_contracts.channel(opened) == ChannelState(10, 0)


def test_a_direct_refund_voids_a_signed_one(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties, opened: bytes
) -> None:
    functions = channel_contracts.settlement.functions
    config = parties.config.as_tuple()
    signature = channel_contracts.sign_refund(parties.receiver_authorizer, opened, 0, 100)
    chain.transact(parties.receiver, functions.refund(config, 1))
    call = functions.refundWithSignature(config, 100, 0, signature)
    assert custom_error(call, parties.relayer.address) == "RefundNonceMismatch"


def test_claim_then_refund_in_one_multicall(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    """The shape a facilitator sends for a cooperative refund after the last voucher."""
    functions = channel_contracts.settlement.functions
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 2_500)
    claim_signature = channel_contracts.sign_claim_batch(parties.receiver_authorizer, [row])
    rest = DEPOSIT - 2_500
    refund_signature = channel_contracts.sign_refund(parties.receiver_authorizer, opened, 0, rest)
    calls = [
        functions.claimWithSignature([row.as_tuple()], claim_signature)._encode_transaction_data(),
        functions.refundWithSignature(
            parties.config.as_tuple(), rest, 0, refund_signature
        )._encode_transaction_data(),
    ]
    before = test_token.balance_of(parties.payer.address)
    chain.transact(parties.relayer, functions.multicall(calls))
    assert channel_contracts.channel(opened) == ChannelState(2_500, 2_500)
    assert test_token.balance_of(parties.payer.address) == before + rest
    # Any failing call reverts the whole batch.
    bad = [calls[0], calls[1]]
    assert custom_error(functions.multicall(bad), parties.relayer.address) == (
        "RefundNonceMismatch"
    )


# ------------------------------------------------------------------------------ withdrawal


def test_timed_withdrawal(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    test_token: TestToken,
    parties: Parties,
    opened: bytes,
) -> None:
    functions = channel_contracts.settlement.functions
    config = parties.config.as_tuple()
    delay = parties.config.withdraw_delay

    # Only the payer side may start it, for at most the unclaimed escrow.
    call = functions.initiateWithdraw(config, 1_000)
    assert custom_error(call, parties.receiver.address) == "NotPayerSide"
    assert custom_error(functions.initiateWithdraw(config, DEPOSIT + 1), parties.payer.address) == (
        "WithdrawAboveAvailable"
    )
    assert custom_error(functions.finalizeWithdraw(config), parties.payer.address) == (
        "NoPendingWithdrawal"
    )

    receipt = chain.transact(parties.payer, functions.initiateWithdraw(config, DEPOSIT))
    started = chain.timestamp()
    assert channel_contracts.pending_withdrawal(opened) == PendingWithdrawal(DEPOSIT, started)
    [initiated] = channel_contracts.events(receipt, "WithdrawInitiated")
    assert initiated["amount"] == DEPOSIT
    assert custom_error(functions.initiateWithdraw(config, 1), parties.payer.address) == (
        "WithdrawalPending"
    )

    # Too early: refused, nothing moves.
    increase_time(chain, delay - 10)
    assert custom_error(functions.finalizeWithdraw(config), parties.payer.address) == (
        "WithdrawDelayNotElapsed"
    )
    receipt = chain.transact(
        parties.payer, functions.finalizeWithdraw(config), require_success=False
    )
    assert receipt["status"] == 0

    # During the grace period the receiver side still claims its vouchers.
    row = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 3_000)
    chain.transact(parties.receiver, functions.claim([row.as_tuple()]))

    # After the delay: the payer gets what is still unclaimed, capped to the request.
    increase_time(chain, 10)
    before = test_token.balance_of(parties.payer.address)
    receipt = chain.transact(parties.payer, functions.finalizeWithdraw(config))
    assert test_token.balance_of(parties.payer.address) == before + DEPOSIT - 3_000
    assert channel_contracts.channel(opened) == ChannelState(3_000, 3_000)
    assert channel_contracts.pending_withdrawal(opened) == PendingWithdrawal(0, 0)
    [finalized] = channel_contracts.events(receipt, "WithdrawFinalized")
    assert finalized["amount"] == DEPOSIT - 3_000
    assert len(channel_contracts.events(receipt, "ChannelClosed")) == 1
    # Vouchers above what is left can no longer be claimed.
    late = channel_contracts.voucher_claim(parties.payer_authorizer, parties.config, 4_000)
    assert custom_error(functions.claim([late.as_tuple()]), parties.receiver.address) == (
        "ClaimAboveBalance"
    )


def test_payer_authorizer_may_withdraw(
    chain: LocalChain, channel_contracts: ChannelContracts, test_token: TestToken
) -> None:
    parties = make_parties(chain, test_token, separate_payer_authorizer=True)
    channel_contracts.open_channel(parties.payer, test_token, parties.config, DEPOSIT)
    functions = channel_contracts.settlement.functions
    config = parties.config.as_tuple()
    chain.transact(parties.payer_authorizer, functions.initiateWithdraw(config, 1_000))
    increase_time(chain, parties.config.withdraw_delay)
    before = test_token.balance_of(parties.payer.address)
    chain.transact(parties.payer_authorizer, functions.finalizeWithdraw(config))
    # The tokens go to the payer, never to the authorizer.
    assert test_token.balance_of(parties.payer.address) == before + 1_000
    assert test_token.balance_of(parties.payer_authorizer.address) == 0


def test_a_refund_shrinks_a_pending_withdrawal(
    chain: LocalChain, channel_contracts: ChannelContracts, parties: Parties, opened: bytes
) -> None:
    functions = channel_contracts.settlement.functions
    config = parties.config.as_tuple()
    chain.transact(parties.payer, functions.initiateWithdraw(config, 6_000))
    started = channel_contracts.pending_withdrawal(opened).initiated_at
    chain.transact(parties.receiver, functions.refund(config, 2_000))
    assert channel_contracts.pending_withdrawal(opened) == PendingWithdrawal(4_000, started)
    chain.transact(parties.receiver, functions.refund(config, 4_000))
    assert channel_contracts.pending_withdrawal(opened) == PendingWithdrawal(0, 0)
