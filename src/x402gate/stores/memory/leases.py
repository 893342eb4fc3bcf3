"""Leases of the ``memory://`` store: one ``(holder, expires_at)`` per name, under the store's
lock. Useful within one process only (the store is not shared); the rules are those of
:mod:`x402gate.stores.leases`."""

from __future__ import annotations

import threading

from ..leases import check_lease

__all__ = ["MemoryLeases"]


class MemoryLeases:
    """The lease operations of :class:`~x402gate.stores.memory.MemoryStore`."""

    _lock: threading.Lock
    _leases: dict[str, tuple[str, float]]

    def lease_acquire(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        check_lease(name, holder, ttl_seconds)
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._leases[name] = (holder, float(now) + float(ttl_seconds))
            return True

    def lease_release(self, name: str, holder: str) -> bool:
        check_lease(name, holder)
        with self._lock:
            current = self._leases.get(name)
            if current is None or current[0] != holder:
                return False
            del self._leases[name]
            return True

    def lease_holder(self, name: str, now: float) -> str | None:
        with self._lock:
            current = self._leases.get(name)
            return current[0] if current is not None and current[1] > now else None
