"""Replay stores, credit ledgers and payment-channel state, chosen by URL.

``memory://``, ``sqlite:///path/to/file.db`` (the default), ``redis://host:port/db``. Backends
register their scheme when their module is imported; drivers are imported only when a backend
is created.
"""

from __future__ import annotations

from .base import (
    CREDIT_RECORD_RETENTION_SECONDS,
    MAX_CREDIT_AMOUNT,
    MAX_IDEMPOTENT_RESPONSE_BYTES,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_payment_id,
    credit_account,
    replay_key,
)
from .channels import ChannelBegin, ChannelBeginOutcome, ChannelState, ChannelStep
from .registry import DEFAULT_STORE_URL, open_store, register_scheme

__all__ = [
    "CREDIT_RECORD_RETENTION_SECONDS",
    "DEFAULT_STORE_URL",
    "MAX_CREDIT_AMOUNT",
    "MAX_IDEMPOTENT_RESPONSE_BYTES",
    "ChannelBegin",
    "ChannelBeginOutcome",
    "ChannelState",
    "ChannelStep",
    "ClaimResult",
    "CreditBalance",
    "CreditReservation",
    "IdempotencyOutcome",
    "IdempotencyResult",
    "Store",
    "check_payment_id",
    "credit_account",
    "open_store",
    "register_scheme",
    "replay_key",
]
