"""The webhook outbox in the PostgreSQL store: table ``x402gate_outbox``.

The outbox rows of a journal row are inserted by :meth:`PostgresOutbox._outbox_insert` inside
the transaction that inserts the journal row (see :mod:`x402gate.stores.outbox`). Dead rows stay
in the table (``dead``), the newest :data:`~x402gate.stores.outbox.DEAD_KEPT` of them.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalRow
from ..outbox import DEAD_KEPT, OutboxEntry, OutboxTarget, targets_of
from .connection import PostgresConnection

__all__ = ["PostgresOutbox"]

_ENTRY = "o.endpoint, o.event, o.due, o.attempts, o.created, o.error"


class PostgresOutbox(PostgresConnection):
    """Queue, page, retry, deliver and bury outbox rows."""

    outbox_targets: tuple[OutboxTarget, ...] = ()

    def _outbox_insert(self, conn: Any, row: JournalRow) -> None:
        """Queue ``row`` for its endpoints inside the caller's transaction."""
        for endpoint in targets_of(self.outbox_targets, row):
            conn.execute(
                "INSERT INTO x402gate_outbox (endpoint, event, due, attempts, created, dead,"
                " error) VALUES (%s, %s, %s, 0, %s, false, '') ON CONFLICT DO NOTHING",
                (endpoint, row.id, float(row.time), float(row.time)),
            )

    def _outbox_select(
        self, conn: Any, where: str, order: str, args: tuple[object, ...]
    ) -> list[OutboxEntry]:
        from .journal import _FIELDS, _row

        fields = ", ".join(f"j.{name.strip()}" for name in _FIELDS.split(","))
        cursor = conn.execute(
            f"SELECT {_ENTRY}, j.id IS NOT NULL, {fields} FROM x402gate_outbox o"
            f" LEFT JOIN x402gate_journal j ON j.id = o.event WHERE {where} ORDER BY {order}"
            " LIMIT %s",
            args,
        )
        entries = []
        for values in cursor.fetchall():
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
                conn, "NOT o.dead AND o.due <= %s", "o.due, o.event", (now, limit)
            ),
        )

    def outbox_retry(self, endpoint: str, event: str, due: float, error: str) -> None:
        self._write(
            "outbox_retry",
            lambda conn: conn.execute(
                "UPDATE x402gate_outbox SET due = %s, attempts = attempts + 1, error = %s"
                " WHERE endpoint = %s AND event = %s AND NOT dead",
                (due, error[:256], endpoint, event),
            ),
        )

    def outbox_done(self, endpoint: str, event: str) -> None:
        self._write(
            "outbox_done",
            lambda conn: conn.execute(
                "DELETE FROM x402gate_outbox WHERE endpoint = %s AND event = %s AND NOT dead",
                (endpoint, event),
            ),
        )

    def outbox_dead(self, endpoint: str, event: str, now: float, error: str) -> None:
        def run(conn: Any) -> None:
            conn.execute(
                "UPDATE x402gate_outbox SET dead = true, due = %s, error = %s"
                " WHERE endpoint = %s AND event = %s AND NOT dead",
                (now, error[:256], endpoint, event),
            )
            conn.execute(
                "DELETE FROM x402gate_outbox WHERE dead AND (endpoint, event) IN (SELECT"
                " endpoint, event FROM x402gate_outbox WHERE dead ORDER BY due DESC OFFSET %s)",
                (DEAD_KEPT,),
            )

        self._write("outbox_dead", run)

    def outbox_dead_rows(self, limit: int = 100) -> list[OutboxEntry]:
        return self._read(
            "outbox_dead_rows",
            lambda conn: self._outbox_select(conn, "o.dead", "o.due DESC", (limit,)),
        )

    def outbox_pending(self) -> int:
        return self._read(
            "outbox_pending",
            lambda conn: int(
                conn.execute("SELECT count(*) FROM x402gate_outbox WHERE NOT dead").fetchone()[0]
            ),
        )
