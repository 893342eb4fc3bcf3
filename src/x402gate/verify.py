"""Local pre-verification of ``exact`` payments signed as EIP-3009 authorizations.

:func:`verify_exact` runs the off-chain part of the x402 ``exact``/EVM checklist (structure,
recipient, amount, validity window, EIP-712 signature) in well under a millisecond and without
any network, so that most bad payments are refused before a replay-store claim or a
facilitator round trip. What it cannot know (balance, nonce already used on chain, contract
wallets, the token's real EIP-712 domain) stays the facilitator's job.

Speed comes from doing only what EIP-3009 needs: the domain separator is computed once per
token, the struct hash is a fixed-layout byte concatenation hashed with keccak, and the public
key is recovered with libsecp256k1 (coincurve) directly, comparing raw address bytes instead of
checksummed strings. The result is bit-for-bit the EIP-712 digest of eth-account and the
official SDK (the tests hold it to both).

This module imports coincurve and eth-hash: it is loaded when a gate is built, never by
``import x402gate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, NoReturn

from coincurve import PublicKey
from eth_hash.auto import keccak

from .errors import PaymentError

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

__all__ = ["MAX_SIGNATURE_BYTES", "Authorization", "eip3009_digest", "verify_exact"]

MAX_SIGNATURE_BYTES: Final = 8192
"""Longest signature accepted, in bytes.

EOAs send 65 bytes; smart wallets send EIP-1271 blobs and ERC-6492 wrappers (factory calldata
plus the inner signature) of a few hundred bytes to ~2 KiB. The cap bounds the work an
unauthenticated request can cause before any signature is checked.
"""

# Block-time buffer of the reference verifier: an authorization that expires within 6 s would
# most likely expire before the settlement transaction is mined.
_VALID_BEFORE_BUFFER: Final = 6
# The SDK client signs validBefore = now + (maxTimeoutSeconds or 3600); 0 means "client default".
_DEFAULT_CLIENT_TIMEOUT: Final = 3600

_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N: Final = _SECP256K1_N // 2
_UINT256_LIMIT: Final = 1 << 256
_UINT256_DIGITS: Final = 78  # len(str(2**256 - 1)); bounds int() work on hostile input

_DOMAIN_TYPEHASH: Final = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_TRANSFER_TYPEHASH: Final = keccak(
    b"TransferWithAuthorization(address from,address to,uint256 value,"
    b"uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
_PAD12: Final = bytes(12)  # left padding of a 20-byte address to an ABI word
_ZERO_ADDRESS: Final = bytes(20)
_HIGH_NIBBLE_TO_CASE_BIT: Final = bytes(
    0x20 if chr(c) in "89abcdef" else 0 for c in range(256)
)  # bytes.translate table for EIP-55
_LETTER_BITS: Final = int.from_bytes(b"\x40" * 40, "big")

_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE_RE: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_NETWORK_RE: Final = re.compile(r"eip155:([1-9][0-9]{0,18})")

_INVALID_PAYLOAD: Final = "invalid_payload"
_RECIPIENT_MISMATCH: Final = "invalid_exact_evm_payload_recipient_mismatch"
_VALUE_MISMATCH: Final = "invalid_exact_evm_payload_authorization_value_mismatch"
_VALID_BEFORE: Final = "invalid_exact_evm_payload_authorization_valid_before"
_VALID_AFTER: Final = "invalid_exact_evm_payload_authorization_valid_after"
_BAD_SIGNATURE: Final = "invalid_exact_evm_payload_signature"


@dataclass(frozen=True, slots=True)
class Authorization:
    """An EIP-3009 ``TransferWithAuthorization`` that passed local verification.

    ``recovered`` is True when the 65-byte ``signature`` recovered to ``payer`` (an EOA
    payment, fully checked offline). It is False only when :func:`verify_exact` was called with
    ``allow_unrecovered=True`` and the signature could not be checked offline (a smart wallet's
    EIP-1271 or ERC-6492 signature): the facilitator must then verify it before anything is
    served.
    """

    payer: str
    """``authorization.from``, EIP-55 checksummed."""
    pay_to: str
    """``authorization.to`` (equal to the requirement's ``payTo``), EIP-55 checksummed."""
    value: int
    """Atomic units of the asset; equal to the requirement's amount."""
    valid_after: int
    """Unix seconds; the authorization is usable strictly after the chain passes it."""
    valid_before: int
    """Unix seconds; the authorization expires at this time."""
    nonce: str
    """The EIP-3009 nonce, ``0x`` + 64 lower-case hex digits (the replay-store key part)."""
    signature: bytes
    """The signature; a recovered 65-byte signature has ``v`` normalised to 27/28."""
    recovered: bool
    """True when the signature was checked offline and recovers to ``payer``."""


@dataclass(frozen=True, slots=True)
class _Terms:
    """What the hot path needs from one server requirement, derived once and cached."""

    domain_separator: bytes
    pay_to: bytes
    pay_to_checksummed: str
    amount: int
    window: int  # longest validity the server offered, seconds


# Keyed by every requirement field the terms depend on, so an equal requirement built anew per
# request (the normal case) hits the cache. Only the server's own requirements reach it, so it
# stays tiny; the size cap is a guard against a misuse that would feed it client data.
_TERMS_CACHE: dict[tuple[Any, ...], _Terms] = {}
_TERMS_CACHE_MAX: Final = 512
_NOT_A_STRING: Final = object()  # stands in for a non-string extra value in cache keys


def verify_exact(
    payload: Mapping[str, Any],
    requirements: PaymentRequirements,
    *,
    now: float,
    allow_unrecovered: bool = False,
    max_clock_skew: int = 60,
) -> Authorization:
    """Check an ``exact`` EIP-3009 payment offline and return its authorization.

    ``payload`` is the scheme payload of a ``PaymentPayload`` (``{"signature": ...,
    "authorization": {...}}``); ``requirements`` is the server's own requirement that the
    client's ``accepted`` was already matched to; ``now`` is the gate clock's Unix time.

    Checks, first failure wins (x402 ``exact``/EVM checklist steps 1-9 for EOAs):

    * scheme ``exact``, network ``eip155:<id>``, ``extra.name``/``extra.version`` present
      (402 ``unsupported_scheme`` / ``invalid_exact_evm_failed_to_get_network_config`` /
      ``missing_eip712_domain``; a malformed asset, payTo or amount in the requirement is 402
      ``invalid_payment_requirements``);
    * payload structure: every field present, a string, in range (400 ``invalid_payload``);
    * ``to`` equals ``payTo`` ignoring case (402 ``..._recipient_mismatch``);
    * ``value`` equals the amount exactly (402 ``..._authorization_value_mismatch``);
    * ``validBefore`` at least 6 s ahead and at most ``maxTimeoutSeconds + max_clock_skew``
      ahead (402 ``..._authorization_valid_before``);
    * ``validAfter`` not in the future (402 ``..._authorization_valid_after``);
    * ``from`` is not the zero address, and the signature is a 65-byte low-s ECDSA signature
      (``v`` 27/28, or 0/1) over the EIP-712 digest that recovers to ``from`` (402
      ``invalid_exact_evm_payload_signature``).

    With ``allow_unrecovered=True`` a signature that fails only the last check is returned with
    ``recovered=False`` instead of being refused: ``from`` may be a contract wallet whose
    EIP-1271/ERC-6492 signature only the chain can check, so the caller must defer to the
    facilitator.

    Raises:
        PaymentError: the payment is refused; ``status_code`` and ``code`` say why.
    """
    terms = _terms_of(requirements)

    if not isinstance(payload, Mapping):
        _malformed("payload must be a JSON object")
    auth = payload.get("authorization")
    if not isinstance(auth, Mapping):
        _malformed("payload.authorization must be a JSON object")
    from_raw = _address(auth, "from")
    to_raw = _address(auth, "to")
    value = _uint256(auth, "value")
    valid_after = _uint256(auth, "validAfter")
    valid_before = _uint256(auth, "validBefore")
    nonce = _nonce(auth)
    signature = _signature(payload)

    if to_raw != terms.pay_to:
        raise PaymentError(402, _RECIPIENT_MISMATCH, "authorization.to is not the payTo address")
    if value != terms.amount:
        raise PaymentError(
            402, _VALUE_MISMATCH, "authorization.value is not the amount the server asked for"
        )
    if valid_before < now + _VALID_BEFORE_BUFFER:
        raise PaymentError(402, _VALID_BEFORE, "the authorization has expired or expires now")
    # The price is only promised for maxTimeoutSeconds. A window far longer than that (say a
    # year) would let one signature be presented, or sit unsettled in a facilitator's queue,
    # long after the quote changed, and keep its replay-store entry alive just as long. The
    # official client signs exactly now + maxTimeoutSeconds; the skew allows for its clock.
    if valid_before > now + terms.window + max_clock_skew:
        raise PaymentError(
            402,
            _VALID_BEFORE,
            "authorization.validBefore is further ahead than maxTimeoutSeconds allows",
        )
    if valid_after > now:
        raise PaymentError(402, _VALID_AFTER, "the authorization is not valid yet")
    if from_raw == _ZERO_ADDRESS:
        # ecrecover yields the zero address for garbage, so tokens refuse it as a signer.
        raise PaymentError(402, _BAD_SIGNATURE, "authorization.from is the zero address")

    struct_hash = keccak(
        _TRANSFER_TYPEHASH
        + _PAD12
        + from_raw
        + _PAD12
        + to_raw
        + value.to_bytes(32, "big")
        + valid_after.to_bytes(32, "big")
        + valid_before.to_bytes(32, "big")
        + nonce
    )
    digest = keccak(b"\x19\x01" + terms.domain_separator + struct_hash)
    normalised = _recover_eoa(signature, digest, from_raw)
    if normalised is None:
        if not allow_unrecovered:
            raise PaymentError(
                402, _BAD_SIGNATURE, "the signature does not recover to authorization.from"
            )
        return Authorization(
            payer=_checksum(from_raw),
            pay_to=terms.pay_to_checksummed,
            value=value,
            valid_after=valid_after,
            valid_before=valid_before,
            nonce="0x" + nonce.hex(),
            signature=signature,
            recovered=False,
        )
    return Authorization(
        payer=_checksum(from_raw),
        pay_to=terms.pay_to_checksummed,
        value=value,
        valid_after=valid_after,
        valid_before=valid_before,
        nonce="0x" + nonce.hex(),
        signature=normalised,
        recovered=True,
    )


def eip3009_digest(
    authorization: Mapping[str, Any],
    *,
    name: str,
    version: str,
    chain_id: int,
    verifying_contract: str,
) -> bytes:
    """EIP-712 digest of a wire-form ``TransferWithAuthorization`` (what the payer signs).

    ``authorization`` has the x402 shape (``from``, ``to``, ``value``, ``validAfter``,
    ``validBefore``, ``nonce`` as strings); the domain is the token's EIP-712 domain.
    Malformed fields raise ``PaymentError(400, "invalid_payload")`` as in :func:`verify_exact`.
    """
    if not _ADDRESS_RE.fullmatch(verifying_contract):
        raise ValueError("verifying_contract must be a 0x-prefixed 20-byte hex address")
    separator = _domain_separator(name, version, chain_id, bytes.fromhex(verifying_contract[2:]))
    struct_hash = keccak(
        _TRANSFER_TYPEHASH
        + _PAD12
        + _address(authorization, "from")
        + _PAD12
        + _address(authorization, "to")
        + _uint256(authorization, "value").to_bytes(32, "big")
        + _uint256(authorization, "validAfter").to_bytes(32, "big")
        + _uint256(authorization, "validBefore").to_bytes(32, "big")
        + _nonce(authorization)
    )
    return keccak(b"\x19\x01" + separator + struct_hash)


# --- signature --------------------------------------------------------------------------------


def _recover_eoa(signature: bytes, digest: bytes, expected: bytes) -> bytes | None:
    """The signature with ``v`` as 27/28 if it is a canonical ECDSA signature by ``expected``.

    Canonical is what EIP-3009 tokens (Circle's ``ECRecover``) accept on chain: ``v`` 27/28
    and ``s`` in the lower half of the curve order; high-s twins are refused there, so they are
    refused here. ``v`` 0/1 (some signers' raw recovery id) is normalised, as the SDK
    facilitator does before settling.
    """
    if len(signature) != 65:
        return None
    v = signature[64]
    if v >= 27:
        v -= 27
    if v > 1:
        return None
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < s <= _HALF_N:
        return None
    try:
        public_key = PublicKey.from_signature_and_message(
            signature[:64] + bytes((v,)), digest, hasher=None
        )
    except ValueError:  # r out of range or no point: not a signature of anything
        return None
    if _address_of(public_key.format(compressed=False)[1:]) != expected:
        return None
    return signature[:64] + bytes((v + 27,))


# --- requirements -----------------------------------------------------------------------------


def _terms_of(requirements: PaymentRequirements) -> _Terms:
    extra = requirements.extra or {}
    key = (
        requirements.scheme,
        requirements.network,
        requirements.asset,
        requirements.pay_to,
        requirements.amount,
        requirements.max_timeout_seconds,
        _hashable(extra.get("name")),
        _hashable(extra.get("version")),
        _hashable(extra.get("assetTransferMethod")),
    )
    terms = _TERMS_CACHE.get(key)
    if terms is None:
        terms = _build_terms(*key)
        if len(_TERMS_CACHE) >= _TERMS_CACHE_MAX:
            _TERMS_CACHE.clear()
        _TERMS_CACHE[key] = terms
    return terms


def _hashable(value: object) -> object:
    # extra is free-form JSON; a list or object there must be refused, not crash the cache key.
    return value if value is None or type(value) is str else _NOT_A_STRING


def _build_terms(
    scheme: object,
    network: object,
    asset: object,
    pay_to: object,
    amount: object,
    max_timeout_seconds: object,
    name: object,
    version: object,
    transfer_method: object,
) -> _Terms:
    # Reason codes are those of the SDK's ExactEvmScheme._verify for the same faults. These
    # fire only when the caller passes a requirement the gate never builds; the codes tell
    # which assumption broke without leaking configuration.
    if scheme != "exact":
        raise PaymentError(402, "unsupported_scheme", "only the exact scheme is verified here")
    match = _NETWORK_RE.fullmatch(network) if isinstance(network, str) else None
    if match is None:
        raise PaymentError(
            402,
            "invalid_exact_evm_failed_to_get_network_config",
            "the network is not an eip155:<chainId> network",
        )
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise PaymentError(
            402, "missing_eip712_domain", "requirements.extra needs the token's name and version"
        )
    if transfer_method not in (None, "eip3009"):
        raise PaymentError(
            402,
            "invalid_payment_requirements",
            "only EIP-3009 authorizations are verified here, not " + str(transfer_method),
        )
    if not isinstance(asset, str) or not _ADDRESS_RE.fullmatch(asset):
        raise PaymentError(402, "invalid_payment_requirements", "asset is not an EVM address")
    if not isinstance(pay_to, str) or not _ADDRESS_RE.fullmatch(pay_to):
        raise PaymentError(402, "invalid_payment_requirements", "payTo is not an EVM address")
    if not isinstance(amount, str) or not _is_decimal(amount) or int(amount) >= _UINT256_LIMIT:
        raise PaymentError(402, "invalid_payment_requirements", "amount is not a uint256 string")
    if (
        isinstance(max_timeout_seconds, bool)
        or not isinstance(max_timeout_seconds, int)
        or max_timeout_seconds < 0
    ):
        raise PaymentError(
            402, "invalid_payment_requirements", "maxTimeoutSeconds is not a non-negative integer"
        )
    pay_to_raw = bytes.fromhex(pay_to[2:])
    return _Terms(
        domain_separator=_domain_separator(
            name, version, int(match.group(1)), bytes.fromhex(asset[2:])
        ),
        pay_to=pay_to_raw,
        pay_to_checksummed=_checksum(pay_to_raw),
        amount=int(amount),
        window=max_timeout_seconds or _DEFAULT_CLIENT_TIMEOUT,
    )


def _domain_separator(name: str, version: str, chain_id: int, contract: bytes) -> bytes:
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(name.encode("utf-8"))
        + keccak(version.encode("utf-8"))
        + chain_id.to_bytes(32, "big")
        + _PAD12
        + contract
    )


# --- payload fields ---------------------------------------------------------------------------


def _malformed(reason: str) -> NoReturn:
    # Messages name the field and the rule but never echo the client's value back.
    raise PaymentError(400, _INVALID_PAYLOAD, reason)


def _string(auth: Mapping[str, Any], key: str) -> str:
    value = auth.get(key)
    if type(value) is str:
        return value
    if value is None:
        _malformed(f"authorization.{key} is missing")
    _malformed(f"authorization.{key} must be a string, not {type(value).__name__}")


def _address(auth: Mapping[str, Any], key: str) -> bytes:
    value = _string(auth, key)
    if not _ADDRESS_RE.fullmatch(value):
        _malformed(f"authorization.{key} must be a 0x-prefixed 20-byte hex address")
    return bytes.fromhex(value[2:])


def _is_decimal(value: str) -> bool:
    # isdigit() alone admits non-ASCII digits ("٣", "²"); int() would take signs, "_" and spaces.
    return 0 < len(value) <= _UINT256_DIGITS and value.isascii() and value.isdigit()


def _uint256(auth: Mapping[str, Any], key: str) -> int:
    value = _string(auth, key)
    if not _is_decimal(value):
        _malformed(f"authorization.{key} must be a decimal integer string (digits only)")
    number = int(value)
    if number >= _UINT256_LIMIT:
        _malformed(f"authorization.{key} is out of the uint256 range")
    return number


def _nonce(auth: Mapping[str, Any]) -> bytes:
    value = _string(auth, "nonce")
    if not _NONCE_RE.fullmatch(value):
        _malformed("authorization.nonce must be 0x followed by 32 bytes of hex")
    return bytes.fromhex(value[2:])


def _signature(payload: Mapping[str, Any]) -> bytes:
    value = payload.get("signature")
    if type(value) is not str:
        if value is None:
            _malformed("payload.signature is missing")
        _malformed(f"payload.signature must be a string, not {type(value).__name__}")
    if len(value) > 2 + 2 * MAX_SIGNATURE_BYTES:
        _malformed(f"payload.signature is longer than {MAX_SIGNATURE_BYTES} bytes")
    if len(value) <= 2:
        if value == "0x":
            _malformed("payload.signature is empty")
    else:
        digits = value[2:]
        # isalnum() shuts out the whitespace bytes.fromhex() would skip; fromhex() then refuses
        # letters beyond f and odd lengths. A regex over a long signature costs more.
        if value[:2] == "0x" and digits.isascii() and digits.isalnum():
            try:
                return bytes.fromhex(digits)
            except ValueError:
                pass
    _malformed("payload.signature must be 0x-prefixed hex with whole bytes")


@lru_cache(maxsize=4096)
def _address_of(public_key: bytes) -> bytes:
    """The address of an uncompressed public key (``X || Y``): the last 20 bytes of its keccak.

    Cached (bounded, under 150 bytes an entry): a payer signs every payment with one key, and
    the keccak is a tenth of a voucher's check."""
    return keccak(public_key)[12:]


@lru_cache(maxsize=4096)
def _checksum(address: bytes) -> str:
    """EIP-55 form of a raw address: one keccak and a few whole-string operations.

    Cached (bounded, under 200 bytes an entry): the same few addresses (payers, receivers,
    tokens) come back with every payment, and a channel's config names five of them.

    A letter is upper-cased where the matching nibble of keccak(lower-case hex) is >= 8. Doing
    that with integer masks over all 40 characters at once costs about a microsecond, where a
    per-character loop (or eth-utils) costs ten times more on the hot path.
    """
    lower = address.hex().encode("ascii")
    # 0x20 where the hash nibble is >= 8; translate works on the hash's hex digits.
    flips = keccak(lower).hex()[:40].encode("ascii").translate(_HIGH_NIBBLE_TO_CASE_BIT)
    # 0x40 marks a-f (0x61-0x66) and no digit (0x30-0x39); shifted, it is the case bit 0x20.
    letters = (int.from_bytes(lower, "big") & _LETTER_BITS) >> 1
    mixed = int.from_bytes(lower, "big") ^ (int.from_bytes(flips, "big") & letters)
    return "0x" + mixed.to_bytes(40, "big").decode("ascii")
