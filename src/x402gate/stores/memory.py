"""``memory://``: a replay store inside one Python process.

Right for tests and single-process servers. Several worker processes (gunicorn ``-w 4``,
uvicorn ``--workers``) each get their own empty store, so an authorization could be claimed once
per worker: use ``sqlite://`` or ``redis://`` there.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from ..errors import ConfigurationError
from .base import (
    ClaimResult,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
)
from .registry import register_scheme

__all__ = ["MemoryStore"]

HELD, RELEASED, USED = "held", "released", "used"

# Expired entries forgotten per claim at most: keeps every call O(log n) however many
# entries expire at once, while still forgetting them faster than new claims arrive.
_PURGE_BATCH = 8


@dataclass(slots=True)
class _Entry:
    state: str
    resource: str
    token: str
    expires_at: float


@dataclass(slots=True)
class _IdemEntry:
    fingerprint: str
    ttl_seconds: int
    expires_at: float
    response: bytes | None = None  # None while pending


@register_scheme
class MemoryStore(Store):
    """A dict behind a lock. Operations never do I/O, so the async gate calls them inline."""

    scheme: ClassVar[str] = "memory"
    blocking: ClassVar[bool] = False
    shared_across_processes: ClassVar[bool] = False
    supports_idempotency: ClassVar[bool] = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # (expires_at, key) of every claim; may hold stale items for entries that were
        # re-claimed later, which the purge simply skips.
        self._expiry: list[tuple[float, str]] = []
        # The same for idempotency entries, under the same lock.
        self._idem: dict[str, _IdemEntry] = {}
        self._idem_expiry: list[tuple[float, str]] = []

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` (nothing may follow: there is nothing to configure)."""
        if url.lower() != "memory://":
            raise ConfigurationError(f"memory store URL must be exactly 'memory://', got {url!r}")
        return cls()

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        with self._lock:
            self._purge(now)
            entry = self._entries.get(key)
            if entry is not None and now < entry.expires_at:
                if entry.state == USED:
                    return ClaimResult.USED
                if entry.resource != resource:
                    return ClaimResult.BOUND_ELSEWHERE
                if entry.state == HELD and entry.token != token:
                    return ClaimResult.IN_FLIGHT
                entry.state, entry.token = HELD, token
                if expires_at > entry.expires_at:
                    entry.expires_at = expires_at
                    heapq.heappush(self._expiry, (expires_at, key))
                return ClaimResult.CLAIMED
            self._entries[key] = _Entry(HELD, resource, token, expires_at)
            heapq.heappush(self._expiry, (expires_at, key))
            return ClaimResult.CLAIMED

    def release(self, key: str, token: str) -> bool:
        return self._finish(key, token, RELEASED)

    def mark_used(self, key: str, token: str) -> bool:
        return self._finish(key, token, USED)

    def state(self, key: str, now: float) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now >= entry.expires_at:
                return None
            return entry.state

    # -- idempotency ------------------------------------------------------------------------

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)
        with self._lock:
            self._purge_idem(now)
            entry = self._idem.get(payment_id)
            if entry is not None and now < entry.expires_at:
                if entry.fingerprint != fingerprint:
                    return IdempotencyResult(IdempotencyOutcome.CONFLICT)
                if entry.response is not None:
                    return IdempotencyResult(IdempotencyOutcome.REPLAY, entry.response)
                return IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)
            expires_at = now + ttl_seconds
            self._idem[payment_id] = _IdemEntry(fingerprint, ttl_seconds, expires_at)
            heapq.heappush(self._idem_expiry, (expires_at, payment_id))
            return IdempotencyResult(IdempotencyOutcome.NEW)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        data = check_idempotency_response(response)
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or now >= entry.expires_at or entry.fingerprint != fingerprint:
                return False
            if entry.response is None:
                entry.response = data
                expires_at = now + entry.ttl_seconds
                if expires_at > entry.expires_at:
                    entry.expires_at = expires_at
                    heapq.heappush(self._idem_expiry, (expires_at, payment_id))
            return True

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or entry.response is not None or entry.fingerprint != fingerprint:
                return False
            del self._idem[payment_id]
            return True

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or now >= entry.expires_at:
                return None
            return "pending" if entry.response is None else "done"

    def __len__(self) -> int:
        """Entries currently kept, expired ones not yet purged included."""
        return len(self._entries)

    def _finish(self, key: str, token: str, new_state: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.token != token or entry.state not in (HELD, new_state):
                return False
            entry.state = new_state
            return True

    def _purge(self, now: float) -> None:
        _purge_expired(self._entries, self._expiry, now)

    def _purge_idem(self, now: float) -> None:
        _purge_expired(self._idem, self._idem_expiry, now)


class _Expiring(Protocol):
    @property
    def expires_at(self) -> float: ...


E = TypeVar("E", bound=_Expiring)


def _purge_expired(entries: dict[str, E], expiry: list[tuple[float, str]], now: float) -> None:
    for _ in range(_PURGE_BATCH):
        if not expiry or expiry[0][0] > now:
            return
        _, key = heapq.heappop(expiry)
        entry = entries.get(key)
        # The entry may have been renewed with a later expiry (or abandoned and begun again)
        # since this item was pushed.
        if entry is not None and entry.expires_at <= now:
            del entries[key]
