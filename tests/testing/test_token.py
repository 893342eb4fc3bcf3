"""TestUSDC on a real anvil: EIP-20, EIP-712, EIP-3009, and the official x402 SDK settling it.

The SDK maps token reverts to x402 error codes by substring, so each failure is checked twice:
the exact revert string on a raw call, and the reason the official facilitator reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from eth_typing import HexStr

from x402gate.testing import load_token_artifact, x402_client_sync

from . import (
    SECP256K1_N,
    domain_of,
    payment_required,
    random_nonce,
    sdk_facilitator,
    sign_authorization,
    sign_cancel,
)

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402 import PaymentPayload, PaymentRequirements, x402FacilitatorSync

    from x402gate.testing import LocalChain, TestToken

REPO = Path(__file__).resolve().parents[2]
PRICE = 1_250_000  # 1.25 USDC


@pytest.fixture
def facilitator(chain: LocalChain, facilitator_account: LocalAccount) -> x402FacilitatorSync:
    return sdk_facilitator(chain, facilitator_account)


@pytest.fixture
def relayer(chain: LocalChain) -> LocalAccount:
    """Someone with gas who submits authorizations on a payer's behalf."""
    return chain.new_account()


def sdk_payment(
    payer: LocalAccount, token: TestToken, pay_to: str, amount: int = PRICE, **kwargs: Any
) -> tuple[PaymentPayload, PaymentRequirements]:
    """A payment signed by the official client for a requirement built with the SDK's models."""
    from x402 import PaymentPayload

    offer, requirement = payment_required(token, pay_to, amount, **kwargs)
    payload = x402_client_sync(payer, asset=token).create_payment_payload(offer)
    assert isinstance(payload, PaymentPayload)  # a v2 offer gets a v2 payload
    return payload, requirement


def revert_reason(call: Any, sender: str) -> Exception:
    """The exception of an ``eth_call`` that must revert."""
    from web3.exceptions import ContractLogicError

    with pytest.raises(ContractLogicError) as info:
        call.call({"from": sender})
    return info.value


# ---------------------------------------------------------------------------------- EIP-20


def test_metadata_and_minter(chain: LocalChain, test_token: TestToken) -> None:
    functions = test_token.contract.functions
    assert functions.name().call() == "USD Coin"
    assert functions.symbol().call() == "USDC"
    assert functions.version().call() == "2"
    assert functions.decimals().call() == 6
    assert functions.minter().call() == chain.deployer.address
    asset = test_token.asset
    assert (asset.network, asset.address, asset.name, asset.version, asset.decimals) == (
        "eip155:31337",
        test_token.address,
        "USD Coin",
        "2",
        6,
    )


def test_mint_is_restricted_to_the_deployer(
    chain: LocalChain, test_token: TestToken, relayer: LocalAccount
) -> None:
    supply = test_token.contract.functions.totalSupply().call()
    receipt = test_token.mint(relayer.address, 7)
    assert test_token.balance_of(relayer.address) == 7
    assert test_token.contract.functions.totalSupply().call() == supply + 7
    assert test_token.events(receipt, "Transfer") == [
        {"from": "0x" + "00" * 20, "to": relayer.address, "value": 7}
    ]
    error = revert_reason(test_token.contract.functions.mint(relayer.address, 1), relayer.address)
    assert "TestUSDC: caller is not the minter" in str(error)


def test_transfer_approve_and_transfer_from(
    chain: LocalChain, test_token: TestToken, relayer: LocalAccount, pay_to: str
) -> None:
    spender = chain.new_account()
    test_token.mint(relayer.address, 1_000)
    functions = test_token.contract.functions

    receipt = chain.transact(relayer, functions.transfer(pay_to, 300))
    assert test_token.events(receipt, "Transfer") == [
        {"from": relayer.address, "to": pay_to, "value": 300}
    ]
    chain.transact(relayer, functions.approve(spender.address, 500))
    assert functions.allowance(relayer.address, spender.address).call() == 500
    chain.transact(spender, functions.transferFrom(relayer.address, pay_to, 200))
    assert functions.allowance(relayer.address, spender.address).call() == 300
    assert test_token.balance_of(relayer.address) == 500
    assert test_token.balance_of(pay_to) == 500

    too_much = functions.transferFrom(relayer.address, pay_to, 301)
    assert "ERC20: transfer amount exceeds allowance" in str(
        revert_reason(too_much, spender.address)
    )
    overdraft = functions.transfer(pay_to, 501)
    assert "ERC20: transfer amount exceeds balance" in str(
        revert_reason(overdraft, relayer.address)
    )


# ---------------------------------------------------------------------------------- EIP-712


@pytest.mark.parametrize(("name", "version"), [("USD Coin", "2"), ("USDC", "2"), ("USDC", "1")])
def test_domain_separator_equals_eth_account_hash(
    chain: LocalChain, test_token: TestToken, name: str, version: str
) -> None:
    from eth_account.messages import encode_typed_data

    token = (
        test_token
        if (name, version) == ("USD Coin", "2")
        else chain.deploy_token(name, "T", version)
    )
    signable = encode_typed_data(
        domain_data=domain_of(token),
        message_types={"Ping": [{"name": "x", "type": "uint256"}]},
        message_data={"x": 1},
    )
    assert token.domain_separator() == bytes(signable.header)
    assert token.contract.functions.DOMAIN_SEPARATOR().call() == signable.header
    if token is not test_token:
        assert token.domain_separator() != test_token.domain_separator()


# ---------------------------------------------------------------------------------- x402 SDK


def test_official_client_payment_verifies_and_settles(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: x402FacilitatorSync,
    facilitator_account: LocalAccount,
    payer: LocalAccount,
    pay_to: str,
) -> None:
    payload, requirement = sdk_payment(payer, test_token, pay_to)
    nonce = payload.payload["authorization"]["nonce"]
    payer_before = test_token.balance_of(payer.address)
    sent_before = chain.tx_count(facilitator_account.address)

    verified = facilitator.verify(payload, requirement)
    assert verified.is_valid, verified
    assert verified.payer == payer.address
    assert not test_token.authorization_state(payer.address, nonce)

    settled = facilitator.settle(payload, requirement)
    assert settled.success, settled
    assert settled.network == "eip155:31337"
    assert settled.payer == payer.address
    assert test_token.balance_of(payer.address) == payer_before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert test_token.authorization_state(payer.address, nonce)
    assert chain.tx_count(facilitator_account.address) == sent_before + 1

    receipt = chain.w3.eth.get_transaction_receipt(HexStr(settled.transaction))
    assert receipt["status"] == 1
    assert receipt["from"] == facilitator_account.address
    assert test_token.events(receipt, "AuthorizationUsed") == [
        {"authorizer": payer.address, "nonce": bytes.fromhex(nonce.removeprefix("0x"))}
    ]
    assert test_token.events(receipt, "Transfer") == [
        {"from": payer.address, "to": pay_to, "value": PRICE}
    ]
    # A settlement into an empty balance writes a fresh storage slot: that is the costly case.
    assert 50_000 < receipt["gasUsed"] < 120_000


def test_replayed_payment_is_refused_and_nothing_is_sent(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: x402FacilitatorSync,
    facilitator_account: LocalAccount,
    payer: LocalAccount,
    pay_to: str,
) -> None:
    payload, requirement = sdk_payment(payer, test_token, pay_to)
    assert facilitator.settle(payload, requirement).success

    sent, block = chain.tx_count(facilitator_account.address), chain.block_number()
    again = facilitator.verify(payload, requirement)
    assert not again.is_valid
    assert again.invalid_reason == "invalid_exact_evm_nonce_already_used"
    replay = facilitator.settle(payload, requirement)
    assert not replay.success
    assert replay.error_reason == "invalid_exact_evm_nonce_already_used"
    assert replay.transaction == ""
    assert chain.tx_count(facilitator_account.address) == sent
    assert chain.block_number() == block
    assert test_token.balance_of(pay_to) == PRICE


def test_insufficient_balance_is_reported(
    test_token: TestToken, facilitator: x402FacilitatorSync, payer: LocalAccount, pay_to: str
) -> None:
    payload, requirement = sdk_payment(
        payer, test_token, pay_to, amount=test_token.balance_of(payer.address) + 1
    )
    verified = facilitator.verify(payload, requirement)
    assert verified.invalid_reason == "invalid_exact_evm_insufficient_balance"


def test_tampered_signature_is_reported(
    test_token: TestToken, facilitator: x402FacilitatorSync, payer: LocalAccount, pay_to: str
) -> None:
    payload, requirement = sdk_payment(payer, test_token, pay_to)
    signature = bytearray(bytes.fromhex(payload.payload["signature"].removeprefix("0x")))
    signature[5] ^= 0x01
    forged = payload.model_copy(
        update={"payload": {**payload.payload, "signature": "0x" + signature.hex()}}
    )
    assert facilitator.verify(forged, requirement).invalid_reason == (
        "invalid_exact_evm_payload_signature"
    )


def test_wrong_domain_shared_by_client_and_facilitator_is_caught_on_chain(
    test_token: TestToken, facilitator: x402FacilitatorSync, payer: LocalAccount, pay_to: str
) -> None:
    # Both sides agree on version "1", so the off-chain ECDSA check passes; only the token's
    # own domain (version "2") in the simulated call can refuse it.
    payload, requirement = sdk_payment(
        payer, test_token, pay_to, extra={"name": "USD Coin", "version": "1"}
    )
    verified = facilitator.verify(payload, requirement)
    assert verified.invalid_reason == "invalid_exact_evm_payload_signature"
    assert "FiatTokenV2: invalid signature" in (verified.invalid_message or "")


def test_authorization_expired_on_chain_is_reported(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: x402FacilitatorSync,
    payer: LocalAccount,
    pay_to: str,
) -> None:
    # The SDK checks validBefore against the wall clock; move only the chain's clock past it so
    # the refusal can only come from the token's own check in the simulated call.
    payload, requirement = sdk_payment(payer, test_token, pay_to, max_timeout_seconds=60)
    chain.rpc("evm_increaseTime", [3600])
    chain.rpc("evm_mine")
    verified = facilitator.verify(payload, requirement)
    assert verified.invalid_reason == "invalid_exact_evm_payload_authorization_valid_before"
    assert "FiatTokenV2: authorization is expired" in (verified.invalid_message or "")


def test_canceled_authorization_cannot_be_settled(
    chain: LocalChain,
    test_token: TestToken,
    facilitator: x402FacilitatorSync,
    payer: LocalAccount,
    relayer: LocalAccount,
    pay_to: str,
) -> None:
    payload, requirement = sdk_payment(payer, test_token, pay_to)
    nonce = bytes.fromhex(payload.payload["authorization"]["nonce"].removeprefix("0x"))
    cancel = test_token.contract.get_function_by_signature(
        "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)"
    )

    stranger = chain.new_account()
    forged = cancel(payer.address, nonce, *sign_cancel(stranger, test_token, nonce))
    assert "FiatTokenV2: invalid signature" in str(revert_reason(forged, relayer.address))

    receipt = chain.transact(
        relayer, cancel(payer.address, nonce, *sign_cancel(payer, test_token, nonce))
    )
    assert test_token.events(receipt, "AuthorizationCanceled") == [
        {"authorizer": payer.address, "nonce": nonce}
    ]
    assert test_token.authorization_state(payer.address, nonce)
    assert facilitator.verify(payload, requirement).invalid_reason == (
        "invalid_exact_evm_nonce_already_used"
    )
    twice = cancel(payer.address, nonce, *sign_cancel(payer, test_token, nonce))
    assert "FiatTokenV2: authorization is used or canceled" in str(
        revert_reason(twice, relayer.address)
    )
    assert test_token.balance_of(pay_to) == 0


# ---------------------------------------------------------------------------------- raw calls

_FIELDS = "address,address,uint256,uint256,uint256,bytes32"
TRANSFER_VRS = f"transferWithAuthorization({_FIELDS},uint8,bytes32,bytes32)"
TRANSFER_BYTES = f"transferWithAuthorization({_FIELDS},bytes)"
RECEIVE_VRS = f"receiveWithAuthorization({_FIELDS},uint8,bytes32,bytes32)"
RECEIVE_BYTES = f"receiveWithAuthorization({_FIELDS},bytes)"


def _call(token: TestToken, signature: str, *args: Any) -> Any:
    return token.contract.get_function_by_signature(signature)(*args)


@pytest.mark.parametrize(
    ("case", "revert", "reason"),
    [
        (
            "used",
            "FiatTokenV2: authorization is used or canceled",
            "invalid_exact_evm_nonce_already_used",
        ),
        ("other_signer", "FiatTokenV2: invalid signature", "invalid_exact_evm_payload_signature"),
        ("other_chain_id", "FiatTokenV2: invalid signature", "invalid_exact_evm_payload_signature"),
        ("other_version", "FiatTokenV2: invalid signature", "invalid_exact_evm_payload_signature"),
        (
            "expired",
            "FiatTokenV2: authorization is expired",
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "not_yet_valid",
            "FiatTokenV2: authorization is not yet valid",
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "over_balance",
            "ERC20: transfer amount exceeds balance",
            "invalid_exact_evm_insufficient_balance",
        ),
        ("receive_by_non_payee", "FiatTokenV2: caller must be the payee", "transaction_failed"),
    ],
)
def test_revert_strings_map_to_sdk_reasons(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    relayer: LocalAccount,
    pay_to: str,
    case: str,
    revert: str,
    reason: str,
) -> None:
    from x402.mechanisms.evm.exact.eip3009_utils import parse_eip3009_transfer_error

    now = chain.timestamp()  # eth_call runs at the latest block's time, not the wall clock's
    options: dict[str, Any] = {"to": pay_to, "value": PRICE}
    signer, signature = payer, TRANSFER_VRS
    if case == "other_signer":
        signer = chain.new_account(eth_wei=0)
        options["from_"] = payer.address
    elif case == "other_chain_id":
        options["domain"] = domain_of(test_token, chain_id=8453)
    elif case == "other_version":
        options["domain"] = domain_of(test_token, version="1")
    elif case == "expired":
        options["valid_before"] = now - 1
    elif case == "not_yet_valid":
        options["valid_after"] = now + 3600
    elif case == "over_balance":
        options["value"] = test_token.balance_of(payer.address) + 1
    elif case == "receive_by_non_payee":
        options["primary_type"] = "ReceiveWithAuthorization"
        signature = RECEIVE_VRS
    authorization = sign_authorization(signer, test_token, **options)
    if case == "used":
        chain.transact(relayer, _call(test_token, TRANSFER_VRS, *authorization.vrs_args()))

    error = revert_reason(_call(test_token, signature, *authorization.vrs_args()), relayer.address)
    assert revert in str(error)
    assert parse_eip3009_transfer_error(error) == reason


def test_signature_must_be_canonical(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    relayer: LocalAccount,
    pay_to: str,
) -> None:
    authorization = sign_authorization(payer, test_token, to=pay_to, value=PRICE)
    fields = authorization.fields()
    high_s = (SECP256K1_N - int.from_bytes(authorization.s, "big")).to_bytes(32, "big")
    twin_v = 55 - authorization.v  # 27 <-> 28: the same signer, as plain ecrecover would say
    rejected = {
        "high s (malleable twin)": (*fields, twin_v, authorization.r, high_s),
        "v = 0/1 form": (*fields, authorization.v - 27, authorization.r, authorization.s),
    }
    for label, args in rejected.items():
        error = revert_reason(_call(test_token, TRANSFER_VRS, *args), relayer.address)
        assert "FiatTokenV2: invalid signature" in str(error), label
    compact = authorization.signature[:64]  # EIP-2098 form is not accepted for EOAs
    error = revert_reason(
        _call(test_token, TRANSFER_BYTES, *authorization.bytes_args(compact)), relayer.address
    )
    assert "FiatTokenV2: invalid signature" in str(error)

    # A garbage signature recovers to address(0); "from = 0" must not make it valid.
    zero = ("0x" + "00" * 20, pay_to, 0, 0, 2**40, random_nonce(), 27, b"\x00" * 32, b"\x00" * 32)
    error = revert_reason(_call(test_token, TRANSFER_VRS, *zero), relayer.address)
    assert "FiatTokenV2: invalid signature" in str(error)

    # The canonical signature in the bytes form goes through.
    chain.transact(relayer, _call(test_token, TRANSFER_BYTES, *authorization.bytes_args()))
    assert test_token.balance_of(pay_to) == PRICE


def test_time_bounds_are_strict(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    relayer: LocalAccount,
    pay_to: str,
) -> None:
    latest = chain.timestamp()
    cases = [  # (block timestamp, validAfter, validBefore, mined successfully?)
        (latest + 10, 0, latest + 10, False),  # validBefore == now: expired
        (latest + 11, latest + 11, latest + 100, False),  # validAfter == now: not yet valid
        (latest + 12, latest + 11, latest + 13, True),  # strictly inside the window
    ]
    for timestamp, valid_after, valid_before, succeeds in cases:
        authorization = sign_authorization(
            payer,
            test_token,
            to=pay_to,
            value=1,
            valid_after=valid_after,
            valid_before=valid_before,
        )
        chain.rpc("evm_setNextBlockTimestamp", [timestamp])
        receipt = chain.transact(
            relayer,
            _call(test_token, TRANSFER_VRS, *authorization.vrs_args()),
            require_success=False,
        )
        assert (receipt["status"] == 1) is succeeds, (timestamp, valid_after, valid_before)
        assert test_token.authorization_state(payer.address, authorization.nonce) is succeeds
    assert test_token.balance_of(pay_to) == 1


def _eip1271_wallet_code(approved_digest: bytes) -> str:
    """Runtime code of a contract wallet approving exactly one digest (EIP-1271).

    ``isValidSignature(bytes32 digest, bytes)`` answers 0x1626ba7e if ``digest`` is the
    approved one and 0xffffffff otherwise, whatever the signature bytes.
    """
    answer = "60e01b60005260206000f3"  # PUSH1 224 SHL, PUSH1 0 MSTORE, RETURN(0, 32)
    refuse = "63ffffffff" + answer
    head_size = 2 + 1 + 33 + 1 + 2 + 1  # the six instructions of `head` below
    jumpdest = head_size + len(refuse) // 2
    # arg0 (the digest) == approved ? jump to "accept" : fall through to "refuse"
    head = "600435" + "7f" + approved_digest.hex() + "14" + f"60{jumpdest:02x}" + "57"
    code = head + refuse + "5b" + "631626ba7e" + answer
    assert len(head) // 2 == head_size
    return "0x" + code


def test_contract_wallet_signs_with_eip1271(
    chain: LocalChain, test_token: TestToken, relayer: LocalAccount, pay_to: str
) -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from eth_utils.crypto import keccak

    wallet = Account.create().address
    authorization = sign_authorization(
        Account.create(), test_token, from_=wallet, to=pay_to, value=PRICE
    )
    signable = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "TransferWithAuthorization": [
                    {"name": "from", "type": "address"},
                    {"name": "to", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "validAfter", "type": "uint256"},
                    {"name": "validBefore", "type": "uint256"},
                    {"name": "nonce", "type": "bytes32"},
                ],
            },
            "primaryType": "TransferWithAuthorization",
            "domain": domain_of(test_token),
            "message": dict(
                zip(
                    ("from", "to", "value", "validAfter", "validBefore", "nonce"),
                    authorization.fields(),
                    strict=True,
                )
            ),
        }
    )
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    chain.rpc("anvil_setCode", [wallet, _eip1271_wallet_code(digest)])
    test_token.mint(wallet, 2 * PRICE)

    wallet_signature = b"any bytes: the wallet decides"
    other = sign_authorization(
        Account.create(), test_token, from_=wallet, to=pay_to, value=PRICE
    )  # another nonce, hence another digest the wallet does not approve
    error = revert_reason(
        _call(test_token, TRANSFER_BYTES, *other.bytes_args(wallet_signature)), relayer.address
    )
    assert "FiatTokenV2: invalid signature" in str(error)

    receipt = chain.transact(
        relayer, _call(test_token, TRANSFER_BYTES, *authorization.bytes_args(wallet_signature))
    )
    assert test_token.events(receipt, "AuthorizationUsed") == [
        {"authorizer": wallet, "nonce": authorization.nonce}
    ]
    assert test_token.balance_of(wallet) == PRICE
    assert test_token.balance_of(pay_to) == PRICE


def test_receive_with_authorization_is_for_the_payee_only(
    chain: LocalChain, test_token: TestToken, payer: LocalAccount, relayer: LocalAccount
) -> None:
    payee = chain.new_account()
    receive = sign_authorization(
        payer, test_token, to=payee.address, value=PRICE, primary_type="ReceiveWithAuthorization"
    )
    # The receive signature is bound to its own type: it cannot be replayed as a transfer.
    as_transfer = revert_reason(
        _call(test_token, TRANSFER_VRS, *receive.vrs_args()), relayer.address
    )
    assert "FiatTokenV2: invalid signature" in str(as_transfer)
    by_other = revert_reason(_call(test_token, RECEIVE_VRS, *receive.vrs_args()), relayer.address)
    assert "FiatTokenV2: caller must be the payee" in str(by_other)

    chain.transact(payee, _call(test_token, RECEIVE_VRS, *receive.vrs_args()))
    assert test_token.balance_of(payee.address) == PRICE
    assert test_token.authorization_state(payer.address, receive.nonce)

    second = sign_authorization(
        payer, test_token, to=payee.address, value=PRICE, primary_type="ReceiveWithAuthorization"
    )
    chain.transact(payee, _call(test_token, RECEIVE_BYTES, *second.bytes_args()))
    assert test_token.balance_of(payee.address) == 2 * PRICE


# ---------------------------------------------------------------------------------- artifact


def _node_and_solc() -> str:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "solc").is_dir():
        reason = "node and the npm 'solc' module are needed to rebuild the token (run `npm ci`)"
        if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return node


def test_artifact_shape_and_pinned_compiler() -> None:
    artifact = load_token_artifact()
    assert list(artifact) == ["compiler", "evmVersion", "abi", "bytecode"]
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["solc"]
    assert artifact["compiler"].startswith(f"solc {pinned}+commit.")
    assert artifact["evmVersion"] == "cancun"
    creation_code = bytes.fromhex(artifact["bytecode"].removeprefix("0x"))
    # solc ends the code with CBOR metadata: ... "solc": <3 version bytes>, then its length 0x33.
    version = bytes(int(part) for part in pinned.split("."))
    assert creation_code.endswith(version + b"\x00\x33")
    names = {entry.get("name") for entry in artifact["abi"]}
    assert {
        "transferWithAuthorization",
        "receiveWithAuthorization",
        "cancelAuthorization",
        "authorizationState",
        "DOMAIN_SEPARATOR",
        "version",
        "AuthorizationUsed",
        "AuthorizationCanceled",
        "Transfer",
    } <= names


@pytest.mark.slow
def test_check_mode_accepts_the_committed_artifact_and_refuses_a_stale_one(
    tmp_path: Path,
) -> None:
    node = _node_and_solc()
    # A copy of the build inputs whose source gained a comment: the metadata hash changes.
    inputs = ["scripts/build-token.mjs", "package.json"]
    for folder, pattern in (("contracts", "*.sol"), ("src/x402gate/testing/artifacts", "*.json")):
        inputs += [str(path.relative_to(REPO)) for path in (REPO / folder).glob(pattern)]
    for relative in inputs:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / relative, tmp_path / relative)
    (tmp_path / "node_modules").symlink_to(REPO / "node_modules")
    source = tmp_path / "contracts" / "TestUSDC.sol"
    source.write_text(source.read_text() + "// a comment changes the metadata hash\n")

    # Two builds of every contract (~1.5 s per contract): run them side by side.
    runs = [
        subprocess.Popen(
            [node, str(root / "scripts" / "build-token.mjs"), "--check"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root in (REPO, tmp_path)
    ]
    (fresh_out, fresh_err), (stale_out, stale_err) = (run.communicate(timeout=120) for run in runs)
    assert runs[0].returncode == 0, fresh_out + fresh_err
    assert "is up to date" in fresh_out
    assert runs[1].returncode == 1, stale_out + stale_err
    assert "TestUSDC.json is stale" in stale_err
    assert "BatchSettlement.json is stale" not in stale_err
