"""EIP-712 digests of ``batch-settlement``: channel ids, vouchers, ERC-3009 deposits.

Computed as fixed-layout byte strings hashed with keccak (no typed-data encoder on the hot
path); the tests hold every digest bit for bit to eth-account, the official SDK and the escrow
contract's own ``getChannelId``/``getVoucherDigest``. Signatures are recovered with
libsecp256k1 through :mod:`x402gate.verify`'s recovery (``v`` 27/28 or 0/1, low ``s`` only, as
the escrow accepts).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Final

from eth_hash.auto import keccak

from ...verify import _domain_separator, _recover_eoa
from .codes import DEPOSIT_COLLECTOR, DOMAIN_NAME, DOMAIN_VERSION, SETTLEMENT_CONTRACT

if TYPE_CHECKING:
    from .wire import ChannelConfig

__all__ = [
    "channel_id",
    "deposit_nonce",
    "receive_authorization_digest",
    "recover",
    "settlement_domain_separator",
    "voucher_digest",
]

_PAD12: Final = bytes(12)
_CHANNEL_CONFIG_TYPEHASH: Final = keccak(
    b"ChannelConfig(address payer,address payerAuthorizer,address receiver,"
    b"address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
)
_VOUCHER_TYPEHASH: Final = keccak(b"Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
_RECEIVE_TYPEHASH: Final = keccak(
    b"ReceiveWithAuthorization(address from,address to,uint256 value,"
    b"uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
_SETTLEMENT: Final = bytes.fromhex(SETTLEMENT_CONTRACT[2:])
_COLLECTOR: Final = bytes.fromhex(DEPOSIT_COLLECTOR[2:])


@lru_cache(maxsize=64)
def settlement_domain_separator(chain_id: int) -> bytes:
    """The escrow's EIP-712 domain separator on ``chain_id`` (cached: one per chain)."""
    return _domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, _SETTLEMENT)


@lru_cache(maxsize=4096)
def channel_id(config: ChannelConfig, chain_id: int) -> bytes:
    """The channel id: the EIP-712 hash of ``config`` under the escrow's domain.

    Cached (bounded: a few hundred bytes per entry): a channel's config comes back with every
    voucher, and two keccaks of a 256-byte struct are a tenth of a voucher's check.
    """
    struct_hash = keccak(
        _CHANNEL_CONFIG_TYPEHASH
        + _PAD12
        + config.payer
        + _PAD12
        + config.payer_authorizer
        + _PAD12
        + config.receiver
        + _PAD12
        + config.receiver_authorizer
        + _PAD12
        + config.token
        + config.withdraw_delay.to_bytes(32, "big")
        + config.salt
    )
    return keccak(b"\x19\x01" + settlement_domain_separator(chain_id) + struct_hash)


def voucher_digest(channel: bytes, max_claimable_amount: int, chain_id: int) -> bytes:
    """The digest a payer authorizer signs: ``Voucher(channelId, maxClaimableAmount)``."""
    struct_hash = keccak(_VOUCHER_TYPEHASH + channel + max_claimable_amount.to_bytes(32, "big"))
    return keccak(b"\x19\x01" + settlement_domain_separator(chain_id) + struct_hash)


def deposit_nonce(channel: bytes, salt: bytes) -> bytes:
    """The ERC-3009 nonce of a deposit: ``keccak256(abi.encode(channelId, salt))``."""
    return keccak(channel + salt)


def receive_authorization_digest(
    token_domain_separator: bytes,
    payer: bytes,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
) -> bytes:
    """The digest a payer signs for a deposit: ``ReceiveWithAuthorization`` to the collector."""
    struct_hash = keccak(
        _RECEIVE_TYPEHASH
        + _PAD12
        + payer
        + _PAD12
        + _COLLECTOR
        + value.to_bytes(32, "big")
        + valid_after.to_bytes(32, "big")
        + valid_before.to_bytes(32, "big")
        + nonce
    )
    return keccak(b"\x19\x01" + token_domain_separator + struct_hash)


def recover(signature: bytes, digest: bytes, expected: bytes) -> bool:
    """True when ``signature`` is a canonical ECDSA signature of ``digest`` by ``expected``."""
    return _recover_eoa(signature, digest, expected) is not None
