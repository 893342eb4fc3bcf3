"""The settlement transaction of an ``exact`` payment, built and signed without web3.

A settlement is always the same call: ``transferWithAuthorization(from, to, value, validAfter,
validBefore, nonce, v, r, s)`` on the token, sent as a legacy EIP-155 transaction with a fixed
gas limit. Its calldata is a fixed layout of nine 32-byte words after a 4-byte selector, so it
is filled in from a template; the transaction is an RLP list of nine items, hashed with keccak
and signed with libsecp256k1 (coincurve) directly. web3's contract layer (ABI lookup, eth-abi
encoding, checksum and type validation) and eth-account's transaction model spend about 2 ms of
CPU on the same bytes.

tests/test_tx.py holds both to the official SDK's signer bit for bit: the calldata to
``encode_contract_call`` and ``FacilitatorWeb3Signer.write_contract``'s transaction, the signed
transaction to eth-account's ``sign_transaction`` of the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from coincurve import PrivateKey
from eth_hash.auto import keccak

__all__ = [
    "TRANSFER_WITH_AUTHORIZATION",
    "LegacyTransaction",
    "TransactionKey",
    "transfer_with_authorization_calldata",
]

TRANSFER_WITH_AUTHORIZATION: Final = keccak(
    b"transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,"
    b"bytes32)"
)[:4]
"""The selector of EIP-3009's ``v, r, s`` overload (``0xe3ee160e``)."""

_PAD12: Final = bytes(12)
_WORD_MAX: Final = 1 << 256


def _word(value: int) -> bytes:
    if not 0 <= value < _WORD_MAX:
        raise ValueError("a uint256 out of range")
    return value.to_bytes(32, "big")


def transfer_with_authorization_calldata(
    payer: bytes,
    pay_to: bytes,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    signature: bytes,
) -> bytes:
    """Calldata of ``transferWithAuthorization`` (the ``v, r, s`` overload).

    ``payer`` and ``pay_to`` are raw 20-byte addresses, ``nonce`` the 32-byte authorization
    nonce and ``signature`` the 65-byte ``r || s || v`` signature (``v`` 27/28, or 0/1, which is
    sent as 27/28 like the SDK does)."""
    if len(payer) != 20 or len(pay_to) != 20:
        raise ValueError("addresses must be 20 bytes")
    if len(nonce) != 32:
        raise ValueError("the authorization nonce must be 32 bytes")
    if len(signature) != 65:
        raise ValueError("the signature must be 65 bytes")
    v = signature[64]
    if v in (0, 1):
        v += 27
    return b"".join(
        (
            TRANSFER_WITH_AUTHORIZATION,
            _PAD12,
            payer,
            _PAD12,
            pay_to,
            _word(value),
            _word(valid_after),
            _word(valid_before),
            nonce,
            _word(v),
            signature[:32],
            signature[32:64],
        )
    )


# --- RLP ------------------------------------------------------------------------------------


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes((offset + length,))
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((offset + 55 + len(size),)) + size


def _rlp_bytes(item: bytes) -> bytes:
    if len(item) == 1 and item[0] < 0x80:
        return item
    return _rlp_length(len(item), 0x80) + item


def _rlp_int(value: int) -> bytes:
    """An integer as RLP: big-endian with no leading zero bytes (0 is the empty string)."""
    if value < 0:
        raise ValueError("RLP integers are unsigned")
    return _rlp_bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _rlp_list(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return _rlp_length(len(body), 0xC0) + body


@dataclass(frozen=True, slots=True)
class LegacyTransaction:
    """The fields of a legacy (type 0) transaction, as the SDK's signer sends them."""

    nonce: int
    gas_price: int
    gas: int
    to: bytes
    data: bytes
    chain_id: int
    value: int = 0

    def _fields(self) -> list[bytes]:
        if len(self.to) != 20:
            raise ValueError("the recipient must be a 20-byte address")
        return [
            _rlp_int(self.nonce),
            _rlp_int(self.gas_price),
            _rlp_int(self.gas),
            _rlp_bytes(self.to),
            _rlp_int(self.value),
            _rlp_bytes(self.data),
        ]

    def signing_hash(self) -> bytes:
        """EIP-155: keccak of the fields followed by the chain id and two empty items."""
        return keccak(_rlp_list([*self._fields(), _rlp_int(self.chain_id), b"\x80", b"\x80"]))


class TransactionKey:
    """A private key that signs :class:`LegacyTransaction` s (it never leaves this object)."""

    __slots__ = ("_key",)

    def __init__(self, private_key: bytes) -> None:
        self._key = PrivateKey(private_key)

    def __repr__(self) -> str:
        return "TransactionKey(...)"

    def sign(self, tx: LegacyTransaction) -> tuple[bytes, bytes]:
        """The raw signed transaction and its hash.

        libsecp256k1 signs deterministically (RFC 6979) with a low ``s``, as eth-account does,
        so both produce the very same bytes."""
        signature = self._key.sign_recoverable(tx.signing_hash(), hasher=None)
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:64], "big")
        v = tx.chain_id * 2 + 35 + signature[64]
        raw = _rlp_list([*tx._fields(), _rlp_int(v), _rlp_int(r), _rlp_int(s)])
        return raw, keccak(raw)
