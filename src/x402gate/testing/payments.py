"""Sign x402 ``exact`` payments by hand, for tests that need payments a normal client won't make.

The official client always signs a well-formed, current authorization. Tests of refusals need
the others: expired, not yet valid, for another amount, recipient or token, with a broken
signature. :func:`sign_exact_payment` builds a v2 ``PaymentPayload`` for given requirements with
any field overridden, signed with eth-account's EIP-712 implementation (independent of the code
under test); :func:`encode_payment` turns it into a ``PAYMENT-SIGNATURE`` header value, and
:func:`decode_payment_required` reads a 402's ``PAYMENT-REQUIRED`` header back as v2 terms.
:func:`sign_in_header` answers a sign-in-with-x challenge the way a wallet does, with any field
overridden (what a wallet shown a relayed or doctored challenge would sign).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..assets import chain_id_of

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

__all__ = [
    "TRANSFER_WITH_AUTHORIZATION_TYPES",
    "decode_payment_required",
    "encode_payment",
    "sign_exact_payment",
    "sign_in_header",
]

TRANSFER_WITH_AUTHORIZATION_TYPES: dict[str, list[dict[str, str]]] = {
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
}
"""The EIP-712 types of an EIP-3009 ``transferWithAuthorization``, as eth-account takes them."""


def sign_exact_payment(
    account: LocalAccount,
    requirements: PaymentRequirements,
    *,
    value: int | None = None,
    to: str | None = None,
    valid_after: int = 0,
    valid_before: int | None = None,
    nonce: str | None = None,
    domain_name: str | None = None,
    domain_version: str | None = None,
    chain_id: int | None = None,
    verifying_contract: str | None = None,
    accepted: PaymentRequirements | None = None,
) -> PaymentPayload:
    """A signed EIP-3009 ``exact`` payment for ``requirements``, with any field overridden."""
    from eth_account.messages import encode_typed_data
    from x402.schemas import PaymentPayload

    extra = requirements.extra or {}
    nonce_bytes = bytes.fromhex((nonce or "0x" + os.urandom(32).hex())[2:])
    message: dict[str, Any] = {
        "from": account.address,
        "to": to or requirements.pay_to,
        "value": int(requirements.amount) if value is None else value,
        "validAfter": valid_after,
        "validBefore": (
            int(time.time()) + requirements.max_timeout_seconds
            if valid_before is None
            else valid_before
        ),
        "nonce": nonce_bytes,
    }
    typed: dict[str, Any] = {
        "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": domain_name or extra.get("name", ""),
            "version": domain_version or extra.get("version", ""),
            "chainId": chain_id or chain_id_of(requirements.network),
            "verifyingContract": verifying_contract or requirements.asset,
        },
        "message": message,
    }
    signed = account.sign_message(encode_typed_data(full_message=typed))
    authorization = {
        "from": message["from"],
        "to": message["to"],
        "value": str(message["value"]),
        "validAfter": str(message["validAfter"]),
        "validBefore": str(message["validBefore"]),
        "nonce": "0x" + nonce_bytes.hex(),
    }
    return PaymentPayload(
        x402_version=2,
        payload={
            "signature": "0x" + signed.signature.hex().removeprefix("0x"),
            "authorization": authorization,
        },
        accepted=accepted or requirements,
    )


def encode_payment(payload: PaymentPayload) -> str:
    """The ``PAYMENT-SIGNATURE`` header value of a payload."""
    from ..protocol import b64json

    return b64json(payload.model_dump(mode="json", by_alias=True, exclude_none=True))


def decode_payment_required(header_value: str) -> PaymentRequired:
    """The v2 terms of a ``PAYMENT-REQUIRED`` header value.

    The SDK's decoder also accepts a v1 body; a v1 challenge in that header is a server bug,
    reported here as a failed assertion rather than a missing attribute further on.
    """
    from x402.http import decode_payment_required_header
    from x402.schemas import PaymentRequired

    required = decode_payment_required_header(header_value)
    if not isinstance(required, PaymentRequired):
        raise AssertionError(f"expected x402 v2 payment terms, got {type(required).__name__}")
    return required


def sign_in_header(
    account: LocalAccount, info: Mapping[str, Any], network: str, **override: Any
) -> str:
    """A ``SIGN-IN-WITH-X`` header: the challenge ``info`` (from a 402's ``sign-in-with-x``
    extension) with ``override`` applied, signed with EIP-191 by ``account`` on ``network``."""
    from eth_account.messages import encode_defunct

    from ..siwx import format_eip4361

    fields = {**info, "chainId": network, "type": "eip191", **override}
    message = format_eip4361(fields, account.address, chain_id_of(network))
    signature = account.sign_message(encode_defunct(text=message)).signature.hex()
    signed = "0x" + signature.removeprefix("0x")
    payload = {**fields, "address": account.address, "signature": signed}
    return base64.b64encode(json.dumps(payload).encode()).decode()
