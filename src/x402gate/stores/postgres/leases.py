"""Leases in the PostgreSQL store: table ``x402gate_lease``, one row per name.

An acquire is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, which PostgreSQL runs
atomically against concurrent ones on the same name: exactly one of the instances racing for a
free lease changes the row. The rules are those of :mod:`x402gate.stores.leases`.
"""

from __future__ import annotations

from typing import Any

from ..leases import check_lease
from .connection import PostgresConnection

__all__ = ["PostgresLeases"]

_ACQUIRE = (
    "INSERT INTO x402gate_lease (name, holder, expires_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
    " WHERE x402gate_lease.holder = EXCLUDED.holder OR x402gate_lease.expires_at <= %s"
)


class PostgresLeases(PostgresConnection):
    """The lease operations of :class:`~x402gate.stores.postgres.PostgresStore`."""

    def lease_acquire(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        check_lease(name, holder, ttl_seconds)
        expires_at = float(now) + float(ttl_seconds)

        def run(conn: Any) -> bool:
            cursor = conn.execute(_ACQUIRE, (name, holder, expires_at, float(now)))
            return bool(cursor.rowcount == 1)

        return self._write("lease_acquire", run)

    def lease_release(self, name: str, holder: str) -> bool:
        check_lease(name, holder)

        def run(conn: Any) -> bool:
            cursor = conn.execute(
                "DELETE FROM x402gate_lease WHERE name = %s AND holder = %s", (name, holder)
            )
            return bool(cursor.rowcount == 1)

        return self._write("lease_release", run)

    def lease_holder(self, name: str, now: float) -> str | None:
        def run(conn: Any) -> Any:
            return conn.execute(
                "SELECT holder FROM x402gate_lease WHERE name = %s AND expires_at > %s",
                (name, float(now)),
            ).fetchone()

        row = self._read("lease_holder", run)
        return None if row is None else str(row[0])
