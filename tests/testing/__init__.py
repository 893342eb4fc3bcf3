"""Tests of x402gate.testing, and the few helpers they share.

The helpers sign EIP-3009 authorizations with plain eth-account (independently of the x402
SDK, so a test of the token never relies on the code it checks against) and build the official
SDK objects: payment requirements and an in-process facilitator settling on the local chain.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402 import PaymentRequired, PaymentRequirements, x402FacilitatorSync

    from x402gate.testing import LocalChain, TestToken

__all__ = [
    "SECP256K1_N",
    "SignedAuthorization",
    "domain_of",
    "payment_required",
    "random_nonce",
    "sdk_facilitator",
    "sign_authorization",
    "sign_cancel",
]

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_AUTHORIZATION_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def random_nonce() -> bytes:
    return os.urandom(32)


def domain_of(
    token: TestToken, *, name: str | None = None, version: str | None = None, chain_id: int = 0
) -> dict[str, Any]:
    """The EIP-712 domain a wallet signs with for ``token`` (fields overridable to forge)."""
    return {
        "name": token.name if name is None else name,
        "version": token.version if version is None else version,
        "chainId": chain_id or token.chain.chain_id,
        "verifyingContract": token.address,
    }


@dataclass(frozen=True)
class SignedAuthorization:
    """An EIP-3009 authorization signed with eth-account, ready for the token's functions."""

    from_: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    v: int
    r: bytes
    s: bytes

    @property
    def signature(self) -> bytes:
        return self.r + self.s + bytes([self.v])

    def vrs_args(self) -> tuple[Any, ...]:
        return (*self.fields(), self.v, self.r, self.s)

    def bytes_args(self, signature: bytes | None = None) -> tuple[Any, ...]:
        return (*self.fields(), self.signature if signature is None else signature)

    def fields(self) -> tuple[Any, ...]:
        return (
            self.from_,
            self.to,
            self.value,
            self.valid_after,
            self.valid_before,
            self.nonce,
        )


def sign_authorization(
    account: LocalAccount,
    token: TestToken,
    *,
    to: str,
    value: int,
    valid_after: int = 0,
    valid_before: int | None = None,
    nonce: bytes | None = None,
    primary_type: str = "TransferWithAuthorization",
    domain: dict[str, Any] | None = None,
    from_: str | None = None,
) -> SignedAuthorization:
    """Sign ``TransferWithAuthorization`` (or ``ReceiveWithAuthorization``) per EIP-3009."""
    from eth_account.messages import encode_typed_data

    sender = from_ or account.address
    before = int(time.time()) + 3600 if valid_before is None else valid_before
    nonce = nonce or random_nonce()
    message = {
        "from": sender,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": before,
        "nonce": nonce,
    }
    typed = {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, primary_type: _AUTHORIZATION_FIELDS},
        "primaryType": primary_type,
        "domain": domain or domain_of(token),
        "message": message,
    }
    signed = account.sign_message(encode_typed_data(full_message=typed))
    return SignedAuthorization(
        from_=sender,
        to=to,
        value=value,
        valid_after=valid_after,
        valid_before=before,
        nonce=nonce,
        v=signed.v,
        r=signed.r.to_bytes(32, "big"),
        s=signed.s.to_bytes(32, "big"),
    )


def sign_cancel(account: LocalAccount, token: TestToken, nonce: bytes) -> tuple[int, bytes, bytes]:
    """Sign ``CancelAuthorization(authorizer, nonce)``; returns ``(v, r, s)``."""
    from eth_account.messages import encode_typed_data

    typed = {
        "types": {
            "EIP712Domain": _DOMAIN_FIELDS,
            "CancelAuthorization": [
                {"name": "authorizer", "type": "address"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "CancelAuthorization",
        "domain": domain_of(token),
        "message": {"authorizer": account.address, "nonce": nonce},
    }
    signed = account.sign_message(encode_typed_data(full_message=typed))
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def payment_required(
    token: TestToken,
    pay_to: str,
    amount: int,
    *,
    extra: dict[str, str] | None = None,
    max_timeout_seconds: int = 300,
) -> tuple[PaymentRequired, PaymentRequirements]:
    """A v2 ``PaymentRequired`` offering one exact payment in ``token``, and its requirement."""
    from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo

    requirement = PaymentRequirements(
        scheme="exact",
        network=token.chain.network,
        asset=token.address,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=max_timeout_seconds,
        extra=token.asset.extra if extra is None else extra,
    )
    offer = PaymentRequired(
        resource=ResourceInfo(url="http://test/paid", description="a paid test route"),
        accepts=[requirement],
    )
    return offer, requirement


def sdk_facilitator(chain: LocalChain, account: LocalAccount) -> x402FacilitatorSync:
    """The official in-process facilitator settling on ``chain`` with ``account``'s key.

    A new signer per test: its nonce counter never goes back after ``evm_revert``.
    ``simulate_in_settle`` keeps a doomed settlement from being broadcast (and paid for).
    """
    from x402 import x402FacilitatorSync
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator

    signer = FacilitatorWeb3Signer(
        "0x" + bytes(account.key).hex(), chain.rpc_url, confirmation_timeout_seconds=10
    )
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(
        facilitator, signer, networks=chain.network, simulate_in_settle=True
    )
    return facilitator
