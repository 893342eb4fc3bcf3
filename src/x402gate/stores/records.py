"""What stores answer, and the limits every backend enforces.

The outcomes (:class:`ClaimResult`, :class:`IdempotencyOutcome`), the records read back
(:class:`IdempotencyResult`, :class:`CreditBalance`, :class:`CreditReservation`) and the bounds
on what a store keeps. The rules they follow are documented in :mod:`x402gate.stores.base`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CREDIT_RECORD_RETENTION_SECONDS",
    "CREDIT_STATES",
    "IN_FLIGHT_UNSETTLED",
    "MAX_CREDIT_AMOUNT",
    "MAX_CREDIT_ID_LENGTH",
    "MAX_FINGERPRINT_LENGTH",
    "MAX_IDEMPOTENT_RESPONSE_BYTES",
    "MAX_KEPT_BODY_BYTES",
    "ClaimResult",
    "CreditBalance",
    "CreditReservation",
    "IdempotencyOutcome",
    "IdempotencyResult",
]

MAX_IDEMPOTENT_RESPONSE_BYTES = 1024 * 1024
"""Largest response :meth:`Store.idempotency_complete` stores (1 MiB)."""

MAX_KEPT_BODY_BYTES = MAX_IDEMPOTENT_RESPONSE_BYTES // 2
"""Largest answer body kept for retries with a payment identifier: the stored response carries
it in base64 (4/3 of its size) with the status and headers, and must fit
:data:`MAX_IDEMPOTENT_RESPONSE_BYTES`. Adapters stop buffering above it."""

MAX_FINGERPRINT_LENGTH = 512
"""Longest fingerprint accepted (a hex SHA-256 is 64 characters)."""

MAX_CREDIT_AMOUNT = 2**256 - 1
"""Largest amount, balance or total the credit ledger holds (an EVM ``uint256``)."""

CREDIT_RECORD_RETENTION_SECONDS = 86_400
"""How long past its ``expires_at`` a finished reservation is kept at least (one day)."""

MAX_CREDIT_ID_LENGTH = 256
"""Longest top-up ref or reservation id accepted."""

IN_FLIGHT_UNSETTLED = 2**63 - 1
"""``until_block`` of an entry whose settlement is not known: it counts against every reading."""

CREDIT_STATES = ("held", "committed", "released", "expired")
"""What :attr:`CreditReservation.state` can be."""


class ClaimResult(enum.Enum):
    """Outcome of :meth:`Store.claim`."""

    CLAIMED = "claimed"
    """The caller now holds the key (it was absent, expired, or released for this resource)."""

    IN_FLIGHT = "in_flight"
    """Another request holds the key right now."""

    USED = "used"
    """The authorization was already settled."""

    BOUND_ELSEWHERE = "bound_elsewhere"
    """The key was first presented for another resource."""


class IdempotencyOutcome(enum.Enum):
    """Outcome of :meth:`Store.idempotency_begin`."""

    NEW = "new"
    """The id is now reserved (pending) for this fingerprint: process the request."""

    REPLAY = "replay"
    """Same fingerprint, already answered: :attr:`IdempotencyResult.response` holds the answer."""

    IN_PROGRESS = "in_progress"
    """Same fingerprint, still pending: another request with this id is being processed."""

    CONFLICT = "conflict"
    """The id was first used with another fingerprint (the gate answers 409)."""


@dataclass(frozen=True, slots=True)
class IdempotencyResult:
    """What :meth:`Store.idempotency_begin` found; ``response`` is set for ``REPLAY`` only."""

    outcome: IdempotencyOutcome
    response: bytes | None = None


@dataclass(frozen=True, slots=True)
class CreditBalance:
    """One credit account at one moment (atomic units); see :meth:`Store.credit_balance`.

    ``topped_up == available + reserved + charged`` always holds.
    """

    available: int
    """What a new reservation can take."""

    reserved: int
    """The sum of the live reservations."""

    topped_up: int
    """Everything ever credited by :meth:`Store.credit_topup`."""

    charged: int
    """Everything ever taken by :meth:`Store.credit_commit`."""


@dataclass(frozen=True, slots=True)
class CreditReservation:
    """One reservation as the journal keeps it; see :meth:`Store.credit_reservation`."""

    account: str
    amount: int
    state: str
    """``"held"`` (and live), ``"committed"``, ``"released"`` or ``"expired"``."""
    charged: int
    """What :meth:`Store.credit_commit` took (0 unless committed)."""
    expires_at: float
