"""The payments journal in the SQLite store: table ``x402gate_journal``, one row per outcome.

Rows recorded with a commit (``journal=`` of ``mark_used``, ``credit_commit``,
``channel_commit``) are inserted inside that commit's ``BEGIN IMMEDIATE`` transaction by
:meth:`SQLiteJournal._journal_insert`. Amounts are decimal text, summed with Python integers.
Pruning by retention runs inside the appending transactions, at most once per purge interval
(sooner while there is a backlog) and a purge batch at a time.
"""

from __future__ import annotations

import sqlite3

from ..journal import JournalRow, check_journal_row
from .connection import SQLiteConnection

__all__ = ["SQLiteJournal"]

_FIELDS = "id, time, route, payer, amount, asset, network, outcome, tx, latency, scheme, detail"


class SQLiteJournal(SQLiteConnection):
    """Append, read and prune journal rows."""

    _next_journal_prune: float = float("-inf")

    def _journal_insert(self, conn: sqlite3.Connection, row: JournalRow) -> bool:
        """Insert ``row`` inside the caller's transaction; False when its id is known."""
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO x402gate_journal ({_FIELDS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.time,
                row.route,
                row.payer,
                str(row.amount),
                row.asset,
                row.network,
                row.outcome,
                row.transaction,
                row.latency,
                row.scheme,
                row.detail,
            ),
        )
        if row.time >= self._next_journal_prune:
            deleted = self._journal_prune_in(conn, row.time)
            self._next_journal_prune = self._purge_after(deleted, row.time)
        return cursor.rowcount == 1

    def journal_append(self, row: JournalRow) -> bool:
        check_journal_row(row)
        return self._write("journal_append", lambda conn: self._journal_insert(conn, row))

    def journal_rows(
        self,
        since: float = float("-inf"),
        until: float = float("inf"),
        limit: int = 1_000_000,
        *,
        payer: str | None = None,
    ) -> list[JournalRow]:
        def run(conn: sqlite3.Connection) -> list[JournalRow]:
            if payer is None:
                cursor = conn.execute(
                    f"SELECT {_FIELDS} FROM x402gate_journal WHERE time >= ? AND time < ?"
                    " ORDER BY time, id LIMIT ?",
                    (since, until, limit),
                )
            else:
                cursor = conn.execute(
                    f"SELECT {_FIELDS} FROM x402gate_journal"
                    " WHERE payer = ? AND time >= ? AND time < ? ORDER BY time, id LIMIT ?",
                    (payer, since, until, limit),
                )
            return [_row(tuple(values)) for values in cursor]

        return self._read("journal_rows", run)

    def journal_prune(self, now: float) -> int:
        deleted = 0
        while True:  # in batches, so that no transaction holds the write lock for long
            batch = self._write("journal_prune", lambda conn: self._journal_prune_in(conn, now))
            deleted += batch
            if batch < self._PURGE_LIMIT:
                return deleted

    def _journal_prune_in(self, conn: sqlite3.Connection, now: float) -> int:
        """Delete up to a purge batch of what retention no longer keeps: the oldest rows first,
        by age, then beyond the newest ``rows``."""
        deleted = 0
        cutoff = self.journal_retention.cutoff(now)
        if cutoff is not None:
            deleted += conn.execute(
                "DELETE FROM x402gate_journal WHERE id IN (SELECT id FROM x402gate_journal"
                " WHERE time < ? ORDER BY time, id LIMIT ?)",
                (cutoff, self._PURGE_LIMIT),
            ).rowcount
        keep = self.journal_retention.rows
        if keep is not None and deleted < self._PURGE_LIMIT:
            deleted += conn.execute(
                "DELETE FROM x402gate_journal WHERE id IN (SELECT id FROM x402gate_journal"
                " ORDER BY time, id LIMIT max(0, min(?, (SELECT count(*) FROM"
                " x402gate_journal) - ?)))",
                (self._PURGE_LIMIT - deleted, keep),
            ).rowcount
        return deleted


def _row(values: tuple[object, ...]) -> JournalRow:
    (row_id, time, route, payer, amount, asset, network, outcome, tx, latency, scheme, detail) = (
        values
    )
    return JournalRow(
        id=str(row_id),
        time=float(time),  # type: ignore[arg-type]
        route=str(route),
        payer=str(payer),
        amount=int(str(amount)),
        asset=str(asset),
        network=str(network),
        outcome=str(outcome),
        transaction=str(tx),
        latency=None if latency is None else float(latency),  # type: ignore[arg-type]
        scheme=str(scheme),
        detail=str(detail),
    )
