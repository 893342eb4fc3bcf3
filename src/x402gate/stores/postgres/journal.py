"""The payments journal in the PostgreSQL store: table ``x402gate_journal``.

Rows recorded with a commit (``journal=`` of ``mark_used``, ``credit_commit``,
``channel_commit``) are inserted inside that commit's transaction by
:meth:`PostgresJournal._journal_insert`. Amounts are ``NUMERIC(78, 0)``. Pruning by retention
runs inside appending transactions, at most once per purge interval per process (sooner while
there is a backlog) and a purge batch at a time.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalRow, check_journal_row
from .outbox import PostgresOutbox

__all__ = ["PostgresJournal"]

_FIELDS = "id, time, route, payer, amount, asset, network, outcome, tx, latency, scheme, detail"


class PostgresJournal(PostgresOutbox):
    """Append, read and prune journal rows (a new row queued in the outbox with it)."""

    _next_journal_prune: float = float("-inf")

    def _journal_insert(self, conn: Any, row: JournalRow) -> bool:
        """Insert ``row`` inside the caller's transaction; False when its id is known."""
        cursor = conn.execute(
            f"INSERT INTO x402gate_journal ({_FIELDS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (
                row.id,
                float(row.time),
                row.route,
                row.payer,
                row.amount,
                row.asset,
                row.network,
                row.outcome,
                row.transaction,
                row.latency,
                row.scheme,
                row.detail,
            ),
        )
        added = bool(cursor.rowcount == 1)
        if added and self.outbox_targets:
            self._outbox_insert(conn, row)
        if row.time >= self._next_journal_prune:
            deleted = self._journal_prune_in(conn, row.time)
            self._next_journal_prune = self._purge_after(deleted, row.time)
        return added

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
        def run(conn: Any) -> list[JournalRow]:
            if payer is None:
                cursor = conn.execute(
                    f"SELECT {_FIELDS} FROM x402gate_journal WHERE time >= %s AND time < %s"
                    " ORDER BY time, id LIMIT %s",
                    (since, until, limit),
                )
            else:
                cursor = conn.execute(
                    f"SELECT {_FIELDS} FROM x402gate_journal"
                    " WHERE payer = %s AND time >= %s AND time < %s ORDER BY time, id LIMIT %s",
                    (payer, since, until, limit),
                )
            return [_row(tuple(values)) for values in cursor.fetchall()]

        return self._read("journal_rows", run)

    def journal_prune(self, now: float) -> int:
        deleted = 0
        while True:  # in batches, so that no transaction runs long
            batch = self._write("journal_prune", lambda conn: self._journal_prune_in(conn, now))
            deleted += batch
            if batch < self._PURGE_LIMIT:
                return deleted

    def _journal_prune_in(self, conn: Any, now: float) -> int:
        """Delete up to a purge batch of what retention no longer keeps: the oldest rows first,
        by age, then beyond the newest ``rows``."""
        deleted = 0
        cutoff = self.journal_retention.cutoff(now)
        if cutoff is not None:
            deleted += int(
                conn.execute(
                    "DELETE FROM x402gate_journal WHERE id IN (SELECT id FROM x402gate_journal"
                    " WHERE time < %s ORDER BY time, id LIMIT %s)",
                    (cutoff, self._PURGE_LIMIT),
                ).rowcount
            )
        keep = self.journal_retention.rows
        if keep is not None and deleted < self._PURGE_LIMIT:
            deleted += int(
                conn.execute(
                    "DELETE FROM x402gate_journal WHERE id IN (SELECT id FROM x402gate_journal"
                    " ORDER BY time, id LIMIT greatest(0, least(%s, (SELECT count(*) FROM"
                    " x402gate_journal) - %s)))",
                    (self._PURGE_LIMIT - deleted, keep),
                ).rowcount
            )
        return deleted


def _row(values: tuple[Any, ...]) -> JournalRow:
    (row_id, time, route, payer, amount, asset, network, outcome, tx, latency, scheme, detail) = (
        values
    )
    return JournalRow(
        id=str(row_id),
        time=float(time),
        route=str(route),
        payer=str(payer),
        amount=int(amount),
        asset=str(asset),
        network=str(network),
        outcome=str(outcome),
        transaction=str(tx),
        latency=None if latency is None else float(latency),
        scheme=str(scheme),
        detail=str(detail),
    )
