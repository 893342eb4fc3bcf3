"""The settlement transaction built without web3 (x402gate._tx), held bit for bit to the SDK.

The reference is the official SDK's own facilitator signer: its ``write_contract`` builds and
signs the ``transferWithAuthorization`` transaction through web3 and eth-account, and the raw
bytes it would broadcast are captured here (no chain: a fake provider answers the few reads it
makes). Fields are drawn by hypothesis, edge values included.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from web3.providers.base import JSONBaseProvider
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.constants import TRANSFER_WITH_AUTHORIZATION_VRS_ABI
from x402.mechanisms.evm.multicall import encode_contract_call

from x402gate._tx import (
    TRANSFER_WITH_AUTHORIZATION,
    LegacyTransaction,
    TransactionKey,
    transfer_with_authorization_calldata,
)

KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
UINT256 = st.one_of(
    st.sampled_from([0, 1, 127, 128, 255, 256, 2**64, 2**256 - 1]),
    st.integers(0, 2**256 - 1),
)
ADDRESS = st.binary(min_size=20, max_size=20)
WORD = st.binary(min_size=32, max_size=32)


class _Node(JSONBaseProvider):
    """Answers the reads the SDK signer makes before a broadcast, and keeps the broadcast."""

    def __init__(self, chain_id: int, nonce: int, gas_price: int) -> None:
        super().__init__()
        self.answers = {
            "eth_chainId": hex(chain_id),
            "eth_getTransactionCount": hex(nonce),
            "eth_gasPrice": hex(gas_price),
        }
        self.sent: list[bytes] = []

    def make_request(self, method: Any, params: Any) -> Any:
        if method == "eth_sendRawTransaction":
            raw = bytes.fromhex(params[0].removeprefix("0x"))
            self.sent.append(raw)
            return {"jsonrpc": "2.0", "id": 0, "result": "0x" + "00" * 32}
        return {"jsonrpc": "2.0", "id": 0, "result": self.answers[method]}


def _checksum(raw: bytes) -> str:
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(raw))


def test_the_selector_is_eip3009s_vrs_overload() -> None:
    assert TRANSFER_WITH_AUTHORIZATION.hex() == "e3ee160e"


@settings(max_examples=200)
@given(
    payer=ADDRESS,
    pay_to=ADDRESS,
    value=UINT256,
    valid_after=UINT256,
    valid_before=UINT256,
    nonce=WORD,
    r=WORD,
    s=WORD,
    v=st.sampled_from([0, 1, 27, 28]),
)
def test_calldata_is_the_sdks(
    payer: bytes,
    pay_to: bytes,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    r: bytes,
    s: bytes,
    v: int,
) -> None:
    ours = transfer_with_authorization_calldata(
        payer, pay_to, value, valid_after, valid_before, nonce, r + s + bytes((v,))
    )
    theirs = encode_contract_call(
        TRANSFER_WITH_AUTHORIZATION_VRS_ABI,
        "transferWithAuthorization",
        _checksum(payer),
        _checksum(pay_to),
        value,
        valid_after,
        valid_before,
        nonce,
        v + 27 if v < 27 else v,  # the SDK's _split_signature_parts
        r,
        s,
    )
    assert ours == theirs


@settings(max_examples=60, deadline=None)
@given(
    token=ADDRESS,
    payer=ADDRESS,
    pay_to=ADDRESS,
    value=UINT256,
    valid_before=UINT256,
    nonce=WORD,
    signature=st.binary(min_size=64, max_size=64),
    v=st.sampled_from([27, 28]),
    tx_nonce=st.one_of(st.sampled_from([0, 1, 127, 128, 1023]), st.integers(0, 2**40)),
    gas_price=st.one_of(st.sampled_from([0, 1, 7, 10**9]), st.integers(0, 2**80)),
    chain_id=st.sampled_from([1, 8453, 84532, 31337, 2**31 - 1]),
)
def test_signed_transaction_is_the_sdk_signers(
    token: bytes,
    payer: bytes,
    pay_to: bytes,
    value: int,
    valid_before: int,
    nonce: bytes,
    signature: bytes,
    v: int,
    tx_nonce: int,
    gas_price: int,
    chain_id: int,
) -> None:
    signer = FacilitatorWeb3Signer("0x" + KEY.hex(), "http://127.0.0.1:9")
    node = _Node(chain_id, tx_nonce, gas_price)
    signer._w3.provider = node
    sig = signature + bytes((v,))
    signer.write_contract(
        _checksum(token),
        TRANSFER_WITH_AUTHORIZATION_VRS_ABI,
        "transferWithAuthorization",
        _checksum(payer),
        _checksum(pay_to),
        value,
        0,
        valid_before,
        nonce,
        v,
        signature[:32],
        signature[32:],
    )
    data = transfer_with_authorization_calldata(payer, pay_to, value, 0, valid_before, nonce, sig)
    tx = LegacyTransaction(
        nonce=tx_nonce,
        gas_price=gas_price,
        gas=signer._gas_limit,
        to=token,
        data=data,
        chain_id=chain_id,
    )
    raw, tx_hash = TransactionKey(KEY).sign(tx)
    assert node.sent == [raw]
    decoded = Account.recover_transaction(raw)
    assert decoded == Account.from_key(KEY).address
    from eth_hash.auto import keccak

    assert tx_hash == keccak(raw)


@pytest.mark.parametrize("length", [0, 1, 55, 56, 255, 256, 70_000])
def test_data_of_every_rlp_length_class_signs_like_eth_account(length: int) -> None:
    tx = LegacyTransaction(
        nonce=5, gas_price=10**9, gas=500_000, to=b"\x11" * 20, data=b"\xab" * length, chain_id=1
    )
    raw, _ = TransactionKey(KEY).sign(tx)
    reference = Account.sign_transaction(
        {
            "nonce": 5,
            "gasPrice": 10**9,
            "gas": 500_000,
            "to": _checksum(b"\x11" * 20),
            "value": 0,
            "data": b"\xab" * length,
            "chainId": 1,
        },
        KEY,
    )
    assert raw == bytes(reference.raw_transaction)


def test_the_key_is_never_shown() -> None:
    assert KEY.hex() not in repr(TransactionKey(KEY))


@pytest.mark.parametrize(
    "bad",
    [
        {"payer": b"\x01" * 19},
        {"nonce": b"\x01" * 31},
        {"signature": b"\x01" * 64},
        {"value": 2**256},
        {"value": -1},
    ],
)
def test_malformed_fields_are_refused(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "payer": b"\x01" * 20,
        "pay_to": b"\x02" * 20,
        "value": 1,
        "valid_after": 0,
        "valid_before": 2,
        "nonce": b"\x03" * 32,
        "signature": b"\x04" * 64 + b"\x1b",
    }
    fields.update(bad)
    with pytest.raises(ValueError):
        transfer_with_authorization_calldata(**fields)


def test_a_remembered_check_still_checks_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct path remembers a payment's offline check between verify and settle, but not
    its time window: an authorization that expired meanwhile leaves the direct path (and the
    SDK's scheme refuses it)."""
    import time

    from x402gate._direct import DirectExact
    from x402gate._rpc import Signer
    from x402gate.assets import Asset
    from x402gate.protocol import build_requirements
    from x402gate.testing.payments import sign_exact_payment

    asset = Asset(
        network="eip155:31337",
        address="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        decimals=6,
        name="USD Coin",
        version="2",
    )
    requirements = build_requirements(asset, 1000, Account.create().address, 60)
    payment = sign_exact_payment(Account.create(), requirements)
    signer = Signer("0x" + KEY.hex(), "http://127.0.0.1:9", confirmation_timeout=1)
    try:
        direct = DirectExact(signer, ["eip155:31337"])
        first = direct.transfer(payment, requirements)
        assert first is not None
        assert direct.transfer(payment, requirements) is first  # remembered
        valid_before = int(payment.payload["authorization"]["validBefore"])
        monkeypatch.setattr(time, "time", lambda: valid_before - 5.0)
        assert direct.transfer(payment, requirements) is None
        other = requirements.model_copy(update={"amount": "999"})
        monkeypatch.undo()
        assert direct.transfer(payment, other) is None  # other terms: checked anew, refused
    finally:
        signer.close()
