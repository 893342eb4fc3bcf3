"""The webhook outbox of the ``memory://`` store: in this process's memory, lost on restart.

Rows are added under the store's lock by the journal append that records their event, so both
happen together; see :mod:`x402gate.stores.outbox`. A restart forgets undelivered rows, like
every other state of this store: use SQLite, Redis or PostgreSQL for deliveries that survive
one. At most :data:`MAX_PENDING` rows wait; beyond that the oldest one is dead-lettered.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict

from ..journal import JournalRow
from ..outbox import DEAD_KEPT, OutboxEntry, OutboxTarget, targets_of

__all__ = ["MAX_PENDING", "MemoryOutbox"]

MAX_PENDING = 100_000
"""Rows waiting at most in the memory store's outbox."""


class MemoryOutbox:
    """Pending rows by (endpoint, event) in insertion order, dead rows newest last."""

    _lock: threading.Lock
    _journal: dict[str, JournalRow]
    outbox_targets: tuple[OutboxTarget, ...] = ()

    def _outbox_init(self) -> None:
        self._outbox: OrderedDict[tuple[str, str], OutboxEntry] = OrderedDict()
        self._outbox_dead: OrderedDict[tuple[str, str], OutboxEntry] = OrderedDict()

    def _outbox_add(self, row: JournalRow) -> None:
        """Queue ``row`` for its endpoints (the caller holds the lock)."""
        for endpoint in targets_of(self.outbox_targets, row):
            key = (endpoint, row.id)
            if key in self._outbox or key in self._outbox_dead:
                continue
            self._outbox[key] = OutboxEntry(endpoint, row.id, row.time, 0, row.time)
            if len(self._outbox) > MAX_PENDING:
                (old_endpoint, old_event), _ = next(iter(self._outbox.items()))
                self._outbox_bury(old_endpoint, old_event, row.time, "outbox full")

    def outbox_due(self, now: float, limit: int) -> list[OutboxEntry]:
        with self._lock:
            due = heapq.nsmallest(
                limit,
                (entry for entry in self._outbox.values() if entry.due <= now),
                key=lambda entry: (entry.due, entry.event),
            )
            return [_with_row(entry, self._journal.get(entry.event)) for entry in due]

    def outbox_retry(self, endpoint: str, event: str, due: float, error: str) -> None:
        with self._lock:
            entry = self._outbox.get((endpoint, event))
            if entry is not None:
                self._outbox[(endpoint, event)] = OutboxEntry(
                    endpoint, event, due, entry.attempts + 1, entry.created, error[:256]
                )

    def outbox_done(self, endpoint: str, event: str) -> None:
        with self._lock:
            self._outbox.pop((endpoint, event), None)

    def outbox_dead(self, endpoint: str, event: str, now: float, error: str) -> None:
        with self._lock:
            self._outbox_bury(endpoint, event, now, error)

    def _outbox_bury(self, endpoint: str, event: str, now: float, error: str) -> None:
        entry = self._outbox.pop((endpoint, event), None)
        if entry is None:
            return
        self._outbox_dead[(endpoint, event)] = OutboxEntry(
            endpoint, event, now, entry.attempts, entry.created, error[:256]
        )
        while len(self._outbox_dead) > DEAD_KEPT:
            self._outbox_dead.popitem(last=False)

    def outbox_dead_rows(self, limit: int = 100) -> list[OutboxEntry]:
        with self._lock:
            rows = list(reversed(self._outbox_dead.values()))[:limit]
            return [_with_row(entry, self._journal.get(entry.event)) for entry in rows]

    def outbox_pending(self) -> int:
        with self._lock:
            return len(self._outbox)


def _with_row(entry: OutboxEntry, row: JournalRow | None) -> OutboxEntry:
    return OutboxEntry(
        entry.endpoint, entry.event, entry.due, entry.attempts, entry.created, entry.error, row
    )
