"""Argument checks and key names shared by every backend.

Backends run these before touching their storage, so that every backend refuses the same
arguments with the same error (:class:`ValueError`, :class:`TypeError` or
:class:`~x402gate.errors.ConfigurationError`), and name accounts and authorizations the same way.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError
from .records import (
    IN_FLIGHT_UNSETTLED,
    MAX_CREDIT_AMOUNT,
    MAX_CREDIT_ID_LENGTH,
    MAX_FINGERPRINT_LENGTH,
    MAX_IDEMPOTENT_RESPONSE_BYTES,
)

__all__ = [
    "check_block",
    "check_credit_account",
    "check_credit_amount",
    "check_credit_id",
    "check_credit_reserve",
    "check_idempotency_args",
    "check_idempotency_response",
    "check_idempotency_ttl",
    "check_in_flight_admit",
    "check_payment_id",
    "credit_account",
    "replay_key",
]

_PAYMENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_HEX_ADDRESS_RE = re.compile(r"0x[0-9A-Fa-f]+")
_BAD_ACCOUNT_PART_RE = re.compile(r"[|\s]")


def check_payment_id(payment_id: str) -> str:
    """``payment_id`` if it is 16-128 characters of ``[A-Za-z0-9_-]``, else :class:`ValueError`."""
    if not isinstance(payment_id, str) or _PAYMENT_ID_RE.fullmatch(payment_id) is None:
        raise ValueError(
            f"payment identifier must be 16-128 characters of [A-Za-z0-9_-], got {payment_id!r:.80}"
        )
    return payment_id


def check_idempotency_args(payment_id: str, fingerprint: str) -> None:
    """The argument checks every backend runs before an idempotency operation."""
    check_payment_id(payment_id)
    if not isinstance(fingerprint, str) or not 0 < len(fingerprint) <= MAX_FINGERPRINT_LENGTH:
        raise ValueError(
            f"idempotency fingerprint must be a non-empty string of at most "
            f"{MAX_FINGERPRINT_LENGTH} characters"
        )


def check_idempotency_ttl(ttl_seconds: int) -> None:
    """A positive whole number of seconds, else :class:`ConfigurationError`."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ConfigurationError(
            f"idempotency TTL must be a positive number of seconds, got {ttl_seconds!r}"
        )


def check_idempotency_response(response: bytes) -> bytes:
    """``response`` as bytes if it fits :data:`MAX_IDEMPOTENT_RESPONSE_BYTES`.

    Raises :class:`ConfigurationError` above the cap: the gate checks the size first and
    abandons instead of caching an answer that large.
    """
    if not isinstance(response, bytes | bytearray | memoryview):
        raise TypeError(f"idempotency response must be bytes, got {type(response).__name__}")
    data = bytes(response)
    if len(data) > MAX_IDEMPOTENT_RESPONSE_BYTES:
        raise ConfigurationError(
            f"idempotency response of {len(data)} bytes exceeds the "
            f"{MAX_IDEMPOTENT_RESPONSE_BYTES}-byte cap"
        )
    return data


def credit_account(network: str, asset: str, payer: str) -> str:
    """The canonical name of the credit account of ``payer`` for ``asset`` on ``network``.

    Hex (EVM) addresses and the network are lower-cased, so a checksummed and a lower-case
    spelling share one balance; other address forms are kept as given, since base58 addresses
    are case-sensitive. Raises :class:`ValueError` for empty parts or parts holding ``|`` or
    whitespace, which would make two accounts share a name.
    """
    parts = []
    for name, value in (("network", network), ("asset", asset), ("payer", payer)):
        if not isinstance(value, str) or _BAD_ACCOUNT_PART_RE.search(value) or not value:
            raise ValueError(
                f"credit account {name} must be a non-empty string without '|' or whitespace, "
                f"got {value!r:.80}"
            )
        lower = name == "network" or _HEX_ADDRESS_RE.fullmatch(value) is not None
        parts.append(value.lower() if lower else value)
    return "|".join(parts)


def check_credit_amount(amount: int, what: str = "amount", *, zero: bool = False) -> int:
    """``amount`` if it is an int in ``[1, MAX_CREDIT_AMOUNT]`` (``[0, ...]`` with ``zero``)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"credit {what} must be an int of atomic units, got {amount!r:.80}")
    if not (0 if zero else 1) <= amount <= MAX_CREDIT_AMOUNT:
        raise ValueError(
            f"credit {what} must be {'non-negative' if zero else 'positive'} and at most "
            f"2**256 - 1, got {amount}"
        )
    return amount


def check_credit_id(value: str, what: str) -> str:
    """``value`` if it is a non-empty string of at most :data:`MAX_CREDIT_ID_LENGTH`."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CREDIT_ID_LENGTH:
        raise ValueError(
            f"credit {what} must be a non-empty string of at most {MAX_CREDIT_ID_LENGTH} "
            f"characters, got {value!r:.80}"
        )
    return value


def check_credit_account(account: str) -> str:
    """``account`` if it looks like a :func:`credit_account` name (three ``|``-joined parts)."""
    check_credit_id(account, "account")
    parts = account.split("|")
    if len(parts) != 3 or not all(parts) or re.search(r"\s", account):
        raise ValueError(
            f"credit account must be made by credit_account(network, asset, payer), "
            f"got {account!r:.80}"
        )
    return account


def check_credit_reserve(
    account: str, amount: int, reservation_id: str, expires_at: float, now: float
) -> None:
    """The argument checks every backend runs before :meth:`Store.credit_reserve`."""
    check_credit_account(account)
    check_credit_amount(amount)
    check_credit_id(reservation_id, "reservation id")
    if not expires_at > now:
        raise ValueError(f"credit reservation must expire after now, got {expires_at} <= {now}")


def check_in_flight_admit(
    account: str, entry_id: str, amount: int, balance: int, block: int, expires_at: float
) -> None:
    """The argument checks every backend runs before :meth:`Store.in_flight_admit`."""
    check_credit_account(account)
    check_credit_id(entry_id, "in-flight entry id")
    check_credit_amount(amount)
    check_credit_amount(balance, "balance", zero=True)
    check_block(block)
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        raise TypeError(f"expires_at must be a number of seconds, got {expires_at!r:.80}")


def check_block(block: int) -> int:
    """``block`` if it is an int in ``[0, IN_FLIGHT_UNSETTLED]``."""
    if (
        isinstance(block, bool)
        or not isinstance(block, int)
        or not 0 <= block <= IN_FLIGHT_UNSETTLED
    ):
        raise ValueError(f"block must be an int from 0 to 2**63 - 1, got {block!r:.80}")
    return block


def replay_key(network: str, asset: str, payer: str, nonce: str) -> str:
    """The canonical key of one authorization (addresses and nonce lower-cased)."""
    return f"{network}|{asset.lower()}|{payer.lower()}|{nonce.lower()}"
