"""Leases in the SQLite store: table ``x402gate_lease``, one row per name.

An acquire is one upsert whose ``DO UPDATE`` only applies when the row is this holder's or has
expired, inside a ``BEGIN IMMEDIATE`` transaction: exactly one of the processes racing for a free
lease on the file changes the row. The rules are those of :mod:`x402gate.stores.leases`.
"""

from __future__ import annotations

import sqlite3

from ..leases import check_lease
from .connection import SQLiteConnection

__all__ = ["SQLiteLeases"]

_ACQUIRE = (
    "INSERT INTO x402gate_lease (name, holder, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
    " WHERE x402gate_lease.holder = excluded.holder OR x402gate_lease.expires_at <= ?"
)


class SQLiteLeases(SQLiteConnection):
    """The lease operations of :class:`~x402gate.stores.sqlite.SQLiteStore`."""

    def lease_acquire(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        check_lease(name, holder, ttl_seconds)
        expires_at = float(now) + float(ttl_seconds)

        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(_ACQUIRE, (name, holder, expires_at, float(now))).rowcount == 1

        return self._write("lease_acquire", run)

    def lease_release(self, name: str, holder: str) -> bool:
        check_lease(name, holder)

        def run(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                "DELETE FROM x402gate_lease WHERE name = ? AND holder = ?", (name, holder)
            )
            return deleted.rowcount == 1

        return self._write("lease_release", run)

    def lease_holder(self, name: str, now: float) -> str | None:
        row = self._read(
            "lease_holder",
            lambda conn: conn.execute(
                "SELECT holder FROM x402gate_lease WHERE name = ? AND expires_at > ?",
                (name, float(now)),
            ).fetchone(),
        )
        return None if row is None else str(row[0])
