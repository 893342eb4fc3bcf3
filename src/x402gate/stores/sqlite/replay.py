"""Replay protection in the SQLite store: claims on authorizations and their recovery.

Table ``x402gate_replay`` holds one row per claimed authorization; ``x402gate_recovery`` the
last recovery check of a held key and ``x402gate_answering`` the last sign of life of a claim
whose answer is on the way (*sending*: a ``used`` row plus a row there, so that files and
workers of before it read such a claim as used, a replay, the safe reading). The rules are
those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

import sqlite3

from ..journal import JournalRow, check_journal_row
from ..records import ClaimResult
from .journal import SQLiteJournal

__all__ = ["SQLiteReplay"]


class SQLiteReplay(SQLiteJournal):
    """Claims, releases, recovery checks and take-overs of authorizations."""

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        def run(conn: sqlite3.Connection) -> ClaimResult:
            self._purge(conn, now)
            row = conn.execute(
                "SELECT state, resource, expires_at, token FROM x402gate_replay WHERE key = ?",
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
                    "UPDATE x402gate_replay SET state = 'held', token = ?,"
                    " expires_at = max(expires_at, ?) WHERE key = ?",
                    (token, expires_at, key),
                )
                return ClaimResult.CLAIMED
            # A new entry: nothing of an expired one carries over (its last recovery check).
            conn.execute("DELETE FROM x402gate_recovery WHERE key = ?", (key,))
            conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_replay (key, resource, token, state, expires_at)"
                " VALUES (?, ?, ?, 'held', ?)",
                (key, resource, token, expires_at),
            )
            return ClaimResult.CLAIMED

        return self._write("claim", run)

    def release(self, key: str, token: str) -> bool:
        return self._finish("release", key, token, "released")

    def mark_used(
        self, key: str, token: str, now: float | None = None, *, journal: JournalRow | None = None
    ) -> bool:
        # The row is checked in the transaction (before it changes anything), not here: a
        # synced mark_used is first tried inline, refused (WouldBlock) and run again in the
        # worker thread, and the row would be checked twice.
        return self._mark_used(key, token, now, journal)

    def _mark_used(
        self, key: str, token: str, now: float | None, journal: JournalRow | None
    ) -> bool:
        # "sending" is a used row with a row in x402gate_answering: files and workers of before
        # it see a used claim (a replay), which is the safe reading.
        if now is None:

            def answered(conn: sqlite3.Connection) -> bool:
                if journal is not None:
                    check_journal_row(journal)
                cursor = conn.execute(
                    "UPDATE x402gate_replay SET state = 'used'"
                    " WHERE key = ? AND token = ? AND state IN ('held', 'used')",
                    (key, token),
                )
                if cursor.rowcount != 1:
                    return False
                conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
                if journal is not None:
                    self._journal_insert(conn, journal)
                return True

            # Synced like every replay write: it comes after the answer went out (off the
            # client's critical path), and a power cut must not make an answer look undelivered.
            return self._write("mark_used", answered)

        def sending(conn: sqlite3.Connection) -> bool:
            if journal is not None:
                check_journal_row(journal)
            row = conn.execute(
                "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = ? AND r.token = ?",
                (key, token),
            ).fetchone()
            if row is None or row[0] == "released":
                return False
            if journal is not None:
                self._journal_insert(conn, journal)
            if row[0] == "used" and row[2] is None:
                return True  # answered already: it stays answered
            conn.execute("UPDATE x402gate_replay SET state = 'used' WHERE key = ?", (key,))
            conn.execute(
                "INSERT INTO x402gate_answering (key, alive_at, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET alive_at = max(alive_at, excluded.alive_at),"
                " expires_at = excluded.expires_at",
                (key, now, row[1]),
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
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT r.token, r.expires_at, c.checked_at, r.state, a.alive_at"
                " FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_recovery AS c ON c.key = r.key"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = ? AND r.state IN ('held', 'used') AND r.resource = ?",
                (key, resource),
            ).fetchone()
            if row is None or now >= row[1] or (row[2] is not None and now < row[2] + min_interval):
                return None
            if row[3] == "used" and (
                row[4] is None or answer_grace is None or now < row[4] + answer_grace
            ):
                return None  # answered, or its request may still be sending the answer
            # A table of its own, so that files written before recovery existed keep working.
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_recovery (key, checked_at, expires_at)"
                " VALUES (?, ?, ?)",
                (key, now, row[1]),
            )
            token: str = row[0]
            return token

        return self._write("recovery_check", run)

    def take_over(self, key: str, holder: str, token: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_replay SET token = ?3, state = 'held'"
                " WHERE key = ?1 AND ((state = 'held' AND token IN (?2, ?3))"
                " OR (state = 'used' AND token = ?2"
                " AND key IN (SELECT key FROM x402gate_answering WHERE key = ?1)))",
                (key, holder, token),
            )
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
            return True

        return self._write("take_over", run)

    def state(self, key: str, now: float) -> str | None:
        row = self._read(
            "state",
            lambda conn: conn.execute(
                "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key WHERE r.key = ?",
                (key,),
            ).fetchone(),
        )
        if row is None or now >= row[1]:
            return None
        state: str = "sending" if row[0] == "used" and row[2] is not None else row[0]
        return state

    def _finish(self, op: str, key: str, token: str, new_state: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_replay SET state = ?1"
                " WHERE key = ?2 AND token = ?3 AND state IN ('held', ?1)",
                (new_state, key, token),
            )
            return cursor.rowcount == 1

        return self._write(op, run)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_replay WHERE key IN"
            " (SELECT key FROM x402gate_replay WHERE expires_at <= ? LIMIT ?)",
            (now, self._PURGE_LIMIT),
        ).rowcount
        conn.execute(
            "DELETE FROM x402gate_recovery WHERE key IN"
            " (SELECT key FROM x402gate_recovery WHERE expires_at <= ? LIMIT ?)",
            (now, self._PURGE_LIMIT),
        )
        conn.execute(
            "DELETE FROM x402gate_answering WHERE key IN"
            " (SELECT key FROM x402gate_answering WHERE expires_at <= ? LIMIT ?)",
            (now, self._PURGE_LIMIT),
        )
        # A full batch means a backlog: purge again on the next claim, else wait a while.
        self._next_purge = self._purge_after(deleted, now)
