"""``memory://``: a replay store inside one Python process.

Right for tests and single-process servers. Several worker processes (gunicorn ``-w 4``,
uvicorn ``--workers``) each get their own empty store, so an authorization could be claimed once
per worker: use ``sqlite://`` or ``redis://`` there.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigurationError
from .base import ClaimResult, Store
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


@register_scheme
class MemoryStore(Store):
    """A dict behind a lock. Operations never do I/O, so the async gate calls them inline."""

    scheme: ClassVar[str] = "memory"
    blocking: ClassVar[bool] = False
    shared_across_processes: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # (expires_at, key) of every claim; may hold stale items for entries that were
        # re-claimed later, which the purge simply skips.
        self._expiry: list[tuple[float, str]] = []

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
        expiry = self._expiry
        for _ in range(_PURGE_BATCH):
            if not expiry or expiry[0][0] > now:
                return
            _, key = heapq.heappop(expiry)
            entry = self._entries.get(key)
            # The entry may have been re-claimed with a later expiry since this item was pushed.
            if entry is not None and entry.expires_at <= now:
                del self._entries[key]
