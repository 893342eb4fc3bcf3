"""Replay stores (and, later, credit ledgers), chosen by URL.

``memory://``, ``sqlite:///path/to/file.db`` (the default), ``redis://host:port/db``. Backends
register their scheme when their module is imported; drivers are imported only when a backend
is created.
"""

from __future__ import annotations

from .base import (
    MAX_IDEMPOTENT_RESPONSE_BYTES,
    ClaimResult,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_payment_id,
    replay_key,
)
from .registry import DEFAULT_STORE_URL, open_store, register_scheme

__all__ = [
    "DEFAULT_STORE_URL",
    "MAX_IDEMPOTENT_RESPONSE_BYTES",
    "ClaimResult",
    "IdempotencyOutcome",
    "IdempotencyResult",
    "Store",
    "check_payment_id",
    "open_store",
    "register_scheme",
    "replay_key",
]
