"""Payments in flight in the SQLite store: the bound on handler runs per payer.

Table ``x402gate_in_flight``, one row per verified payment whose settlement is not known yet.
Amounts are decimal text summed with Python integers (as in the credit ledger); the sum and the
insert run in one ``BEGIN IMMEDIATE`` transaction, so admissions of one payer from every
process on the file are serialized. The rules are those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

import sqlite3

from ..checks import check_block, check_in_flight_admit
from ..records import IN_FLIGHT_UNSETTLED
from .connection import SQLiteConnection

__all__ = ["SQLiteInFlight"]


class SQLiteInFlight(SQLiteConnection):
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

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_in_flight(conn, account, now)
            rows = conn.execute(
                "SELECT id, amount, until_block FROM x402gate_in_flight WHERE account = ?",
                (account,),
            ).fetchall()
            for row_id, row_amount, _ in rows:
                if row_id == entry_id:
                    return int(row_amount) == amount
            held = sum(int(row_amount) for _, row_amount, until in rows if until > block)
            if held + amount > balance:
                return False
            conn.execute(
                "INSERT INTO x402gate_in_flight (account, id, amount, until_block, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account, entry_id, str(amount), IN_FLIGHT_UNSETTLED, float(expires_at)),
            )
            return True

        return self._write("in_flight_admit", run, self.ledger_synchronous)

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_in_flight SET until_block = ?, expires_at = ?"
                " WHERE account = ? AND id = ? AND expires_at > ?",
                (block, float(expires_at), account, entry_id, now),
            )
            return cursor.rowcount == 1

        return self._write("in_flight_settle", run, self.ledger_synchronous)

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM x402gate_in_flight WHERE account = ? AND id = ?", (account, entry_id)
            )
            return cursor.rowcount == 1

        return self._write("in_flight_release", run, self.ledger_synchronous)

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        rows = self._read(
            "in_flight_total",
            lambda conn: conn.execute(
                "SELECT amount FROM x402gate_in_flight"
                " WHERE account = ? AND until_block > ? AND expires_at > ?",
                (account, block, now),
            ).fetchall(),
        )
        return sum(int(row[0]) for row in rows)

    def _purge_in_flight(self, conn: sqlite3.Connection, account: str, now: float) -> None:
        conn.execute(
            "DELETE FROM x402gate_in_flight WHERE account = ? AND expires_at <= ?", (account, now)
        )
        if now < self._next_in_flight_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_in_flight WHERE (account, id) IN"
            " (SELECT account, id FROM x402gate_in_flight WHERE expires_at <= ? LIMIT ?)",
            (now, self._PURGE_LIMIT),
        ).rowcount
        self._next_in_flight_purge = self._purge_after(deleted, now)
