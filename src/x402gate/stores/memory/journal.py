"""The payments journal of the ``memory://`` store: rows in this process's memory only.

A restart forgets them, like everything else in this store, and several worker processes each
keep their own: use a shared store for a journal to report on. Memory stays bounded: the
memory store keeps the newest 100,000 rows unless :attr:`journal_retention` says otherwise
(appends prune the excess in batches of a 64th of that; :meth:`journal_prune` to the row).
"""

from __future__ import annotations

import bisect
import threading

from ..journal import JournalRetention, JournalRow, check_journal_row
from .outbox import MemoryOutbox

__all__ = ["MemoryJournal"]

_PRUNE_EVERY = 1024
"""Appends between two prunes by age."""

_OVER = 64
"""A prune by count runs on append once the journal is over its ``rows`` by a 64th of them
(at once below 64 rows): dropping the oldest row shifts the whole time-ordered list, which at
100,000 rows cost every append some 16 µs when done one row at a time."""


class MemoryJournal(MemoryOutbox):
    """Rows by id, and their (time, id) order for reports; under the store's lock. A new row
    is queued in the webhook outbox under the same lock."""

    _lock: threading.Lock
    journal_retention: JournalRetention = JournalRetention(days=400.0, rows=100_000)

    def _journal_init(self) -> None:
        self._journal: dict[str, JournalRow] = {}
        self._journal_order: list[tuple[float, str]] = []
        self._journal_appends = 0
        self._outbox_init()

    def _journal_add(self, row: JournalRow) -> bool:
        """Append under the lock (the caller holds it); False when the id is known."""
        if row.id in self._journal:
            return False
        self._journal[row.id] = row
        bisect.insort(self._journal_order, (row.time, row.id))
        self._journal_appends += 1
        if self.outbox_targets:
            self._outbox_add(row)
        limit = self.journal_retention.rows
        if (limit is not None and len(self._journal) > limit + limit // _OVER) or (
            self._journal_appends % _PRUNE_EVERY == 0
        ):
            self._journal_prune_locked(row.time)
        return True

    def journal_append(self, row: JournalRow) -> bool:
        check_journal_row(row)
        with self._lock:
            return self._journal_add(row)

    def journal_rows(
        self,
        since: float = float("-inf"),
        until: float = float("inf"),
        limit: int = 1_000_000,
        *,
        payer: str | None = None,
    ) -> list[JournalRow]:
        with self._lock:
            start = bisect.bisect_left(self._journal_order, (since, ""))
            rows: list[JournalRow] = []
            for time, row_id in self._journal_order[start:]:
                if time >= until or len(rows) >= limit:
                    break
                row = self._journal[row_id]
                if payer is None or row.payer == payer:
                    rows.append(row)
            return rows

    def journal_prune(self, now: float) -> int:
        with self._lock:
            return self._journal_prune_locked(now)

    def _journal_prune_locked(self, now: float) -> int:
        cutoff = self.journal_retention.cutoff(now)
        drop = 0
        if cutoff is not None:
            drop = bisect.bisect_left(self._journal_order, (cutoff, ""))
        limit = self.journal_retention.rows
        if limit is not None:
            drop = max(drop, len(self._journal_order) - limit)
        for _, row_id in self._journal_order[:drop]:
            del self._journal[row_id]
        del self._journal_order[:drop]
        return drop
