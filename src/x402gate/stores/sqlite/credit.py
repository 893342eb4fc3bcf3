"""The credit ledger in the SQLite store: accounts, top-ups and reservations.

Tables ``x402gate_credit_account``, ``x402gate_credit_topup`` and
``x402gate_credit_reservation``. Amounts are stored as decimal text and computed with Python
integers: SQLite's INTEGER is 64-bit and silently turns an overflowing sum into a float, while
the ledger holds any ``uint256``. Every operation reads and writes in one ``BEGIN IMMEDIATE``
transaction; the spending writes are committed with ``ledger_synchronous`` (see
:mod:`x402gate.stores.sqlite`). The rules are those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

import sqlite3

from ...errors import StoreError
from ..checks import (
    check_credit_account,
    check_credit_amount,
    check_credit_id,
    check_credit_reserve,
)
from ..journal import JournalRow, check_journal_row
from ..records import (
    CREDIT_RECORD_RETENTION_SECONDS,
    MAX_CREDIT_AMOUNT,
    CreditBalance,
    CreditReservation,
)
from .journal import SQLiteJournal

__all__ = ["SQLiteCredit"]


def _read_account(conn: sqlite3.Connection, account: str) -> CreditBalance | None:
    row = conn.execute(
        "SELECT available, reserved, topped_up, charged FROM x402gate_credit_account"
        " WHERE account = ?",
        (account,),
    ).fetchone()
    return None if row is None else CreditBalance(*(int(value) for value in row))


def _write_account(conn: sqlite3.Connection, account: str, **values: int) -> None:
    if any(value < 0 for value in values.values()):  # unreachable unless the file was edited
        raise StoreError(f"credit account {account!r} would go negative: {values}")
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(
        f"UPDATE x402gate_credit_account SET {assignments} WHERE account = ?",
        (*(str(value) for value in values.values()), account),
    )


class SQLiteCredit(SQLiteJournal):
    """Top-ups, reservations and their commit, release, extension and expiry."""

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")

        def run(conn: sqlite3.Connection) -> int:
            self._purge_credit(conn, now)
            applied = conn.execute(
                "SELECT account, amount FROM x402gate_credit_topup WHERE ref = ?", (ref,)
            ).fetchone()
            if applied is not None and (applied[0], int(applied[1])) != (account, amount):
                raise ValueError(
                    f"credit top-up ref {ref!r:.80} was already applied to another account "
                    "or amount"
                )
            self._expire_held(conn, account, now)
            balance = _read_account(conn, account)
            if balance is None:
                balance = CreditBalance(0, 0, 0, 0)
                conn.execute(
                    "INSERT INTO x402gate_credit_account"
                    " (account, available, reserved, topped_up, charged)"
                    " VALUES (?, '0', '0', '0', '0')",
                    (account,),
                )
            if applied is not None:
                return balance.available
            if balance.topped_up + amount > MAX_CREDIT_AMOUNT:
                raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
            conn.execute(
                "INSERT INTO x402gate_credit_topup (ref, account, amount, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (ref, account, str(amount), now),
            )
            _write_account(
                conn,
                account,
                available=balance.available + amount,
                topped_up=balance.topped_up + amount,
            )
            return balance.available + amount

        return self._write("credit_topup", run)

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_credit(conn, now)
            self._expire_held(conn, account, now)
            known = conn.execute(
                "SELECT account, amount, state, expires_at FROM x402gate_credit_reservation"
                " WHERE id = ?",
                (reservation_id,),
            ).fetchone()
            if known is not None:
                return (
                    known[2] == "held"
                    and now < known[3]
                    and (known[0], int(known[1])) == (account, amount)
                )
            balance = _read_account(conn, account)
            if balance is None or balance.available < amount:
                return False
            conn.execute(
                "INSERT INTO x402gate_credit_reservation"
                " (id, account, amount, state, charged, expires_at, created_at)"
                " VALUES (?, ?, ?, 'held', '0', ?, ?)",
                (reservation_id, account, str(amount), expires_at, now),
            )
            _write_account(
                conn,
                account,
                available=balance.available - amount,
                reserved=balance.reserved + amount,
            )
            return True

        # Not fsynced (unless ledger_synchronous=full): see the module documentation.
        return self._write("credit_reserve", run, synchronous=self.ledger_synchronous)

    def credit_commit(
        self, reservation_id: str, charge: int, now: float, *, journal: JournalRow | None = None
    ) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)
        if journal is not None:
            check_journal_row(journal)

        def run(conn: sqlite3.Connection) -> int:
            charged, fresh = commit(conn)
            if fresh and charged and journal is not None:
                self._journal_insert(conn, journal.with_amount(charged))
            return charged

        def commit(conn: sqlite3.Connection) -> tuple[int, bool]:
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = conn.execute(
                    "SELECT account, amount, state, charged FROM x402gate_credit_reservation"
                    " WHERE id = ?",
                    (reservation_id,),
                ).fetchone()
                if row is None:
                    return 0, False
                if row[2] == "expired":
                    late = self._commit_late(conn, reservation_id, row[0], int(row[1]), charge)
                    return late, True
                return (int(row[3]) if row[2] == "committed" else 0), False
            charged = min(charge, live[1])
            self._end_reservation(conn, reservation_id, live[0], live[1], "committed", charged, now)
            return charged, True

        return self._write("credit_commit", run, synchronous=self.ledger_synchronous)

    def _commit_late(
        self, conn: sqlite3.Connection, reservation_id: str, account: str, amount: int, charge: int
    ) -> int:
        # The answer outlived its hold: the charge is still owed, but only what is available
        # now can pay it (the rest may be held by other requests).
        balance = _read_account(conn, account)
        late = min(charge, amount, balance.available if balance is not None else 0)
        conn.execute(
            "UPDATE x402gate_credit_reservation SET state = 'committed', charged = ? WHERE id = ?",
            (str(late), reservation_id),
        )
        if balance is not None:
            _write_account(
                conn,
                account,
                available=balance.available - late,
                reserved=balance.reserved,
                charged=balance.charged + late,
            )
        return late

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")

        def run(conn: sqlite3.Connection) -> bool:
            if self._live(conn, reservation_id, now) is None:
                return False
            conn.execute(
                "UPDATE x402gate_credit_reservation SET expires_at = max(expires_at, ?)"
                " WHERE id = ?",
                (expires_at, reservation_id),
            )
            return True

        return self._write("credit_extend", run, synchronous=self.ledger_synchronous)

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = conn.execute(
                    "SELECT 1 FROM x402gate_credit_reservation WHERE id = ? AND state = 'released'",
                    (reservation_id,),
                ).fetchone()
                return row is not None
            self._end_reservation(conn, reservation_id, live[0], live[1], "released", 0, now)
            return True

        return self._write("credit_release", run, synchronous=self.ledger_synchronous)

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)

        def run(conn: sqlite3.Connection) -> CreditBalance:
            self._expire_held(conn, account, now)
            return _read_account(conn, account) or CreditBalance(0, 0, 0, 0)

        return self._write("credit_balance", run)

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        row = self._read(
            "credit_reservation",
            lambda conn: conn.execute(
                "SELECT account, amount, state, charged, expires_at"
                " FROM x402gate_credit_reservation WHERE id = ?",
                (reservation_id,),
            ).fetchone(),
        )
        if row is None:
            return None
        state = "expired" if row[2] == "held" and now >= row[4] else row[2]
        return CreditReservation(row[0], int(row[1]), state, int(row[3]), row[4])

    def credit_reconcile(self, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            self._purge_credit(conn, now)
            rows = conn.execute(
                "SELECT id, account, amount FROM x402gate_credit_reservation"
                " WHERE state = 'held' AND expires_at <= ? LIMIT ?",
                (now, self._PURGE_LIMIT),
            ).fetchall()
            for rid, account, amount in rows:
                self._end_reservation(conn, rid, account, int(amount), "expired", 0, now)
            return len(rows)

        # Batches of one transaction each, so other writers get their turn during a large one.
        moved = 0
        while True:
            batch = self._write("credit_reconcile", run, synchronous=self.ledger_synchronous)
            moved += batch
            if batch < self._PURGE_LIMIT:
                return moved

    def _live(
        self, conn: sqlite3.Connection, reservation_id: str, now: float
    ) -> tuple[str, int] | None:
        """(account, amount) if the reservation is held and live, after expiring its account."""
        row = conn.execute(
            "SELECT account, amount, expires_at FROM x402gate_credit_reservation"
            " WHERE id = ? AND state = 'held'",
            (reservation_id,),
        ).fetchone()
        if row is None:
            return None
        self._expire_held(conn, row[0], now)
        return (row[0], int(row[1])) if now < row[2] else None

    def _expire_held(self, conn: sqlite3.Connection, account: str, now: float) -> None:
        rows = conn.execute(
            "SELECT id, amount FROM x402gate_credit_reservation"
            " WHERE account = ? AND state = 'held' AND expires_at <= ?",
            (account, now),
        ).fetchall()
        for rid, amount in rows:
            self._end_reservation(conn, rid, account, int(amount), "expired", 0, now)

    def _end_reservation(
        self,
        conn: sqlite3.Connection,
        reservation_id: str,
        account: str,
        amount: int,
        state: str,
        charged: int,
        now: float,
    ) -> None:
        balance = _read_account(conn, account)
        if balance is None or balance.reserved < amount:
            # Only a hand-edited file gets here; refusing keeps the ledger from going negative.
            raise StoreError(
                f"SQLite store {self.path}: credit account {account!r} does not hold "
                f"reservation {reservation_id!r}"
            )
        conn.execute(
            "UPDATE x402gate_credit_reservation SET state = ?, charged = ?, finished_at = ?"
            " WHERE id = ?",
            (state, str(charged), now, reservation_id),
        )
        _write_account(
            conn,
            account,
            available=balance.available + amount - charged,
            reserved=balance.reserved - amount,
            charged=balance.charged + charged,
        )

    def _purge_credit(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_credit_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_credit_reservation WHERE id IN"
            " (SELECT id FROM x402gate_credit_reservation"
            " WHERE expires_at <= ? AND state != 'held' LIMIT ?)",
            (now - CREDIT_RECORD_RETENTION_SECONDS, self._PURGE_LIMIT),
        ).rowcount
        self._next_credit_purge = self._purge_after(deleted, now)
