"""Payments in flight in the PostgreSQL store: the bound on handler runs per payer.

Table ``x402gate_in_flight``, one row per verified payment whose settlement is not known yet.
An admission takes its account's advisory lock, sums the live entries and inserts in one
transaction, so admissions of one payer from every connection are serialised. The rules are
those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..checks import check_block, check_in_flight_admit
from ..records import IN_FLIGHT_UNSETTLED
from .connection import PostgresConnection

__all__ = ["PostgresInFlight"]


class PostgresInFlight(PostgresConnection):
    """Admitting, settling and releasing payments in flight, and their total per reading."""

    def in_flight_admit(
        self,
        account: str,
        entry_id: str,
        amount: int,
        balance: int,
        block: int,
        expires_at: float,
        now: float,
    ) -> bool:
        check_in_flight_admit(account, entry_id, amount, balance, block, expires_at)

        def run(conn: Any) -> bool:
            self._lock(conn, "in_flight", account)
            self._purge_in_flight(conn, now)
            # The account's expired entries are deleted and the live ones read in one
            # statement: both parts see the same rows, so the read leaves out what the delete
            # removes by the same condition.
            rows = conn.execute(
                "WITH gone AS (DELETE FROM x402gate_in_flight"
                " WHERE account = %(account)s AND expires_at <= %(now)s)"
                " SELECT id, amount, until_block FROM x402gate_in_flight"
                " WHERE account = %(account)s AND expires_at > %(now)s",
                {"account": account, "now": float(now)},
            ).fetchall()
            for row_id, row_amount, _ in rows:
                if row_id == entry_id:
                    return int(row_amount) == amount
            held = sum(int(row_amount) for _, row_amount, until in rows if until > block)
            if held + amount > balance:
                return False
            conn.execute(
                "INSERT INTO x402gate_in_flight (account, id, amount, until_block, expires_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (account, entry_id, amount, IN_FLIGHT_UNSETTLED, float(expires_at)),
            )
            return True

        return self._write("in_flight_admit", run)

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)

        def run(conn: Any) -> bool:
            self._lock(conn, "in_flight", account)
            cursor = conn.execute(
                "UPDATE x402gate_in_flight SET until_block = %s, expires_at = %s"
                " WHERE account = %s AND id = %s AND expires_at > %s",
                (block, float(expires_at), account, entry_id, float(now)),
            )
            return bool(cursor.rowcount == 1)

        return self._write("in_flight_settle", run)

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        def run(conn: Any) -> bool:
            self._lock(conn, "in_flight", account)
            cursor = conn.execute(
                "DELETE FROM x402gate_in_flight WHERE account = %s AND id = %s",
                (account, entry_id),
            )
            return bool(cursor.rowcount == 1)

        return self._write("in_flight_release", run)

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        row = self._read(
            "in_flight_total",
            lambda conn: conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM x402gate_in_flight"
                " WHERE account = %s AND until_block > %s AND expires_at > %s",
                (account, block, float(now)),
            ).fetchone(),
        )
        return int(row[0])

    def _purge_in_flight(self, conn: Any, now: float) -> None:
        """Now and then, a batch of every account's expired entries."""
        if now < self._next_in_flight_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_in_flight WHERE (account, id) IN"
            " (SELECT account, id FROM x402gate_in_flight WHERE expires_at <= %s"
            " LIMIT %s FOR UPDATE SKIP LOCKED)",
            (float(now), self._PURGE_LIMIT),
        ).rowcount
        self._next_in_flight_purge = self._purge_after(int(deleted), now)
