"""Replay protection in the PostgreSQL store: claims on authorizations and their recovery.

Tables as in the SQLite store: ``x402gate_replay`` holds one row per claimed authorization,
``x402gate_recovery`` the last recovery check of a held key, ``x402gate_answering`` the last
sign of life of a claim whose answer is on the way (*sending*: a ``used`` row plus a row
there). Every operation takes the key's advisory lock first, so the read and the write that
follows it are one step for every connection. The rules are those of
:class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalRow, check_journal_row
from ..records import ClaimResult
from .journal import PostgresJournal

__all__ = ["PostgresReplay"]


class PostgresReplay(PostgresJournal):
    """Claims, releases, recovery checks and take-overs of authorizations."""

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        def run(conn: Any) -> ClaimResult:
            self._lock(conn, "replay", key)
            self._purge(conn, now)
            row = conn.execute(
                "SELECT state, resource, expires_at, token FROM x402gate_replay WHERE key = %s",
                (key,),
            ).fetchone()
            if row is not None and now < row[2]:
                if row[0] == "used":
                    return ClaimResult.USED
                if row[1] != resource:
                    return ClaimResult.BOUND_ELSEWHERE
                if row[0] == "held" and row[3] != token:
                    return ClaimResult.IN_FLIGHT
                conn.execute(
                    "UPDATE x402gate_replay SET state = 'held', token = %s,"
                    " expires_at = greatest(expires_at, %s) WHERE key = %s",
                    (token, float(expires_at), key),
                )
                return ClaimResult.CLAIMED
            # A new entry: nothing of an expired one carries over (its last recovery check).
            # One statement, one round trip: the three tables are distinct, so the parts of
            # the statement do not see or touch each other's rows.
            conn.execute(
                "WITH checked AS (DELETE FROM x402gate_recovery WHERE key = %(key)s),"
                " answering AS (DELETE FROM x402gate_answering WHERE key = %(key)s)"
                " INSERT INTO x402gate_replay (key, resource, token, state, expires_at)"
                " VALUES (%(key)s, %(resource)s, %(token)s, 'held', %(expires)s)"
                " ON CONFLICT (key) DO UPDATE SET"
                " resource = EXCLUDED.resource, token = EXCLUDED.token, state = 'held',"
                " expires_at = EXCLUDED.expires_at",
                {"key": key, "resource": resource, "token": token, "expires": float(expires_at)},
            )
            return ClaimResult.CLAIMED

        return self._write("claim", run)

    def release(self, key: str, token: str) -> bool:
        def run(conn: Any) -> bool:
            self._lock(conn, "replay", key)
            cursor = conn.execute(
                "UPDATE x402gate_replay SET state = 'released'"
                " WHERE key = %s AND token = %s AND state IN ('held', 'released')",
                (key, token),
            )
            return bool(cursor.rowcount == 1)

        return self._write("release", run)

    def mark_used(
        self, key: str, token: str, now: float | None = None, *, journal: JournalRow | None = None
    ) -> bool:
        if journal is not None:
            check_journal_row(journal)
        if now is None:

            def answered(conn: Any) -> bool:
                self._lock(conn, "replay", key)
                # The update and the delete of its answering row in one statement.
                row = conn.execute(
                    "WITH used AS (UPDATE x402gate_replay SET state = 'used'"
                    " WHERE key = %(key)s AND token = %(token)s AND state IN ('held', 'used')"
                    " RETURNING key), answered AS (DELETE FROM x402gate_answering"
                    " WHERE key IN (SELECT key FROM used)) SELECT count(*) FROM used",
                    {"key": key, "token": token},
                ).fetchone()
                if row[0] != 1:
                    return False
                if journal is not None:
                    self._journal_insert(conn, journal)
                return True

            return self._write("mark_used", answered)

        def sending(conn: Any) -> bool:
            self._lock(conn, "replay", key)
            row = conn.execute(
                "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = %s AND r.token = %s",
                (key, token),
            ).fetchone()
            if row is None or row[0] == "released":
                return False
            if journal is not None:
                self._journal_insert(conn, journal)
            if row[0] == "used" and row[2] is None:
                return True  # answered already: it stays answered
            # Both writes in one statement (two tables: neither part sees the other's row).
            conn.execute(
                "WITH used AS (UPDATE x402gate_replay SET state = 'used' WHERE key = %(key)s)"
                " INSERT INTO x402gate_answering (key, alive_at, expires_at)"
                " VALUES (%(key)s, %(now)s, %(expires)s)"
                " ON CONFLICT (key) DO UPDATE SET"
                " alive_at = greatest(x402gate_answering.alive_at, EXCLUDED.alive_at),"
                " expires_at = EXCLUDED.expires_at",
                {"key": key, "now": float(now), "expires": row[1]},
            )
            return True

        return self._write("mark_used", sending)

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        def run(conn: Any) -> str | None:
            self._lock(conn, "replay", key)
            row = conn.execute(
                "SELECT r.token, r.expires_at, c.checked_at, r.state, a.alive_at"
                " FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_recovery AS c ON c.key = r.key"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = %s AND r.state IN ('held', 'used') AND r.resource = %s",
                (key, resource),
            ).fetchone()
            if row is None or now >= row[1] or (row[2] is not None and now < row[2] + min_interval):
                return None
            if row[3] == "used" and (
                row[4] is None or answer_grace is None or now < row[4] + answer_grace
            ):
                return None  # answered, or its request may still be sending the answer
            conn.execute(
                "INSERT INTO x402gate_recovery (key, checked_at, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET checked_at = EXCLUDED.checked_at,"
                " expires_at = EXCLUDED.expires_at",
                (key, float(now), row[1]),
            )
            token: str = row[0]
            return token

        return self._write("recovery_check", run)

    def take_over(self, key: str, holder: str, token: str) -> bool:
        def run(conn: Any) -> bool:
            self._lock(conn, "replay", key)
            cursor = conn.execute(
                "UPDATE x402gate_replay SET token = %(token)s, state = 'held'"
                " WHERE key = %(key)s AND ((state = 'held' AND token IN (%(holder)s, %(token)s))"
                " OR (state = 'used' AND token = %(holder)s"
                " AND EXISTS (SELECT 1 FROM x402gate_answering WHERE key = %(key)s)))",
                {"key": key, "holder": holder, "token": token},
            )
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM x402gate_answering WHERE key = %s", (key,))
            return True

        return self._write("take_over", run)

    def state(self, key: str, now: float) -> str | None:
        row = self._read(
            "state",
            lambda conn: conn.execute(
                "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key WHERE r.key = %s",
                (key,),
            ).fetchone(),
        )
        if row is None or now >= row[1]:
            return None
        state: str = "sending" if row[0] == "used" and row[2] is not None else row[0]
        return state

    def _purge(self, conn: Any, now: float) -> None:
        """Delete a batch of expired entries. Rows another transaction has locked are skipped
        (never waited for): they go in a later batch."""
        if now < self._next_purge:
            return
        deleted = 0
        for table in ("x402gate_replay", "x402gate_recovery", "x402gate_answering"):
            cursor = conn.execute(
                f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table}"
                " WHERE expires_at <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                (float(now), self._PURGE_LIMIT),
            )
            if table == "x402gate_replay":
                deleted = int(cursor.rowcount)
        # A full batch means a backlog: purge again on the next claim, else wait a while.
        self._next_purge = self._purge_after(deleted, now)
