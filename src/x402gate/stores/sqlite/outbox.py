"""The webhook outbox in the SQLite store: table ``x402gate_outbox``.

The outbox rows of a journal row are inserted by :meth:`SQLiteOutbox._outbox_insert` inside the
transaction that inserts the journal row (see :mod:`x402gate.stores.outbox`), so both are on
disk together or not at all. Dead rows stay in the table (``dead = 1``), the newest
:data:`~x402gate.stores.outbox.DEAD_KEPT` of them.
"""

from __future__ import annotations

import sqlite3

from ..journal import JournalRow
from ..outbox import DEAD_KEPT, OutboxEntry, OutboxTarget, targets_of
from .connection import SQLiteConnection

__all__ = ["SQLiteOutbox"]

_ENTRY = "o.endpoint, o.event, o.due, o.attempts, o.created, o.error"


class SQLiteOutbox(SQLiteConnection):
    """Queue, page, retry, deliver and bury outbox rows."""

    outbox_targets: tuple[OutboxTarget, ...] = ()

    def _outbox_insert(self, conn: sqlite3.Connection, row: JournalRow) -> None:
        """Queue ``row`` for its endpoints inside the caller's transaction."""
        for endpoint in targets_of(self.outbox_targets, row):
            conn.execute(
                "INSERT OR IGNORE INTO x402gate_outbox"
                " (endpoint, event, due, attempts, created, dead, error)"
                " VALUES (?, ?, ?, 0, ?, 0, '')",
                (endpoint, row.id, row.time, row.time),
            )

    def _outbox_select(
        self, conn: sqlite3.Connection, where: str, order: str, args: tuple[object, ...]
    ) -> list[OutboxEntry]:
        from .journal import _FIELDS, _row

        fields = ", ".join(f"j.{name.strip()}" for name in _FIELDS.split(","))
        cursor = conn.execute(
            f"SELECT {_ENTRY}, j.id IS NOT NULL, {fields} FROM x402gate_outbox o"
            f" LEFT JOIN x402gate_journal j ON j.id = o.event WHERE {where} ORDER BY {order}"
            " LIMIT ?",
            args,
        )
        entries = []
        for values in cursor:
            endpoint, event, due, attempts, created, error, found = values[:7]
            entries.append(
                OutboxEntry(
                    str(endpoint),
                    str(event),
                    float(due),
                    int(attempts),
                    float(created),
                    str(error),
                    _row(tuple(values[7:])) if found else None,
                )
            )
        return entries

    def outbox_due(self, now: float, limit: int) -> list[OutboxEntry]:
        return self._read(
            "outbox_due",
            lambda conn: self._outbox_select(
                conn, "o.dead = 0 AND o.due <= ?", "o.due, o.event", (now, limit)
            ),
        )

    def outbox_retry(self, endpoint: str, event: str, due: float, error: str) -> None:
        self._write(
            "outbox_retry",
            lambda conn: conn.execute(
                "UPDATE x402gate_outbox SET due = ?, attempts = attempts + 1, error = ?"
                " WHERE endpoint = ? AND event = ? AND dead = 0",
                (due, error[:256], endpoint, event),
            ),
        )

    def outbox_done(self, endpoint: str, event: str) -> None:
        self._write(
            "outbox_done",
            lambda conn: conn.execute(
                "DELETE FROM x402gate_outbox WHERE endpoint = ? AND event = ? AND dead = 0",
                (endpoint, event),
            ),
        )

    def outbox_dead(self, endpoint: str, event: str, now: float, error: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE x402gate_outbox SET dead = 1, due = ?, error = ?"
                " WHERE endpoint = ? AND event = ? AND dead = 0",
                (now, error[:256], endpoint, event),
            )
            conn.execute(
                "DELETE FROM x402gate_outbox WHERE dead = 1 AND rowid IN (SELECT rowid FROM"
                " x402gate_outbox WHERE dead = 1 ORDER BY due DESC LIMIT -1 OFFSET ?)",
                (DEAD_KEPT,),
            )

        self._write("outbox_dead", run)

    def outbox_dead_rows(self, limit: int = 100) -> list[OutboxEntry]:
        return self._read(
            "outbox_dead_rows",
            lambda conn: self._outbox_select(conn, "o.dead = 1", "o.due DESC", (limit,)),
        )

    def outbox_pending(self) -> int:
        return self._read(
            "outbox_pending",
            lambda conn: int(
                conn.execute("SELECT count(*) FROM x402gate_outbox WHERE dead = 0").fetchone()[0]
            ),
        )
