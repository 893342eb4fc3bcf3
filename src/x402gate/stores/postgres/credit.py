"""The credit ledger in the PostgreSQL store: accounts, top-ups and reservations.

Tables ``x402gate_credit_account``, ``x402gate_credit_topup`` and
``x402gate_credit_reservation``; amounts are ``NUMERIC(78, 0)`` (any ``uint256``, exact) and
computed with Python integers. Every operation runs in one transaction that holds its account's
advisory lock, so no two operations on one account interleave on any connection. Locks are
always taken in one order: the top-up ref or the reservation id first, then the account, and
rows only after both; so operations never wait on each other in a circle. The rules are those
of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

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
from .journal import PostgresJournal

__all__ = ["PostgresCredit"]


def _read_account(conn: Any, account: str) -> CreditBalance | None:
    row = conn.execute(
        "SELECT available, reserved, topped_up, charged FROM x402gate_credit_account"
        " WHERE account = %s",
        (account,),
    ).fetchone()
    return None if row is None else CreditBalance(*(int(value) for value in row))


def _write_account(
    conn: Any,
    account: str,
    along: tuple[str, tuple[object, ...]] | None = None,
    **values: int,
) -> None:
    """Set the account's columns to ``values``; ``along`` (SQL and its parameters), a write to
    another table, runs in the same statement (one round trip; neither sees the other's row)."""
    if any(value < 0 for value in values.values()):  # unreachable unless the rows were edited
        raise StoreError(f"credit account {account!r} would go negative: {values}")
    assignments = ", ".join(f"{name} = %s" for name in values)
    statement = f"UPDATE x402gate_credit_account SET {assignments} WHERE account = %s"
    params: tuple[object, ...] = (*values.values(), account)
    if along is not None:
        statement = f"WITH along AS ({along[0]}) {statement}"
        params = (*along[1], *params)
    conn.execute(statement, params)


class PostgresCredit(PostgresJournal):
    """Top-ups, reservations and their commit, release, extension and expiry."""

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")

        def run(conn: Any) -> int:
            self._lock(conn, "credit_ref", ref)
            self._lock(conn, "credit", account)
            self._purge_credit(conn, now)
            applied = conn.execute(
                "SELECT account, amount FROM x402gate_credit_topup WHERE ref = %s", (ref,)
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
                    " VALUES (%s, 0, 0, 0, 0)",
                    (account,),
                )
            if applied is not None:
                return balance.available
            if balance.topped_up + amount > MAX_CREDIT_AMOUNT:
                raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
            _write_account(
                conn,
                account,
                (
                    "INSERT INTO x402gate_credit_topup (ref, account, amount, applied_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (ref, account, amount, float(now)),
                ),
                available=balance.available + amount,
                topped_up=balance.topped_up + amount,
            )
            return balance.available + amount

        return self._write("credit_topup", run)

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)

        def run(conn: Any) -> bool:
            self._lock(conn, "credit_id", reservation_id)
            self._lock(conn, "credit", account)
            self._purge_credit(conn, now)
            self._expire_held(conn, account, now)
            known = conn.execute(
                "SELECT account, amount, state, expires_at FROM x402gate_credit_reservation"
                " WHERE id = %s",
                (reservation_id,),
            ).fetchone()
            if known is not None:
                return bool(
                    known[2] == "held"
                    and now < known[3]
                    and (known[0], int(known[1])) == (account, amount)
                )
            balance = _read_account(conn, account)
            if balance is None or balance.available < amount:
                return False
            _write_account(
                conn,
                account,
                (
                    "INSERT INTO x402gate_credit_reservation"
                    " (id, account, amount, state, charged, expires_at, created_at)"
                    " VALUES (%s, %s, %s, 'held', 0, %s, %s)",
                    (reservation_id, account, amount, float(expires_at), float(now)),
                ),
                available=balance.available - amount,
                reserved=balance.reserved + amount,
            )
            return True

        return self._write("credit_reserve", run)

    def credit_commit(
        self, reservation_id: str, charge: int, now: float, *, journal: JournalRow | None = None
    ) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)
        if journal is not None:
            check_journal_row(journal)

        def run(conn: Any) -> int:
            charged, fresh = commit(conn)
            if fresh and charged and journal is not None:
                self._journal_insert(conn, journal.with_amount(charged))
            return charged

        def commit(conn: Any) -> tuple[int, bool]:
            row = self._locked_reservation(conn, reservation_id)
            if row is None:
                return 0, False
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = self._locked_reservation(conn, reservation_id, lock=False)
                if row is None:
                    return 0, False
                if row[2] == "expired":
                    late = self._commit_late(conn, reservation_id, row[0], int(row[1]), charge)
                    return late, True
                return (int(row[3]) if row[2] == "committed" else 0), False
            charged = min(charge, live[1])
            self._end_reservation(conn, reservation_id, live[0], live[1], "committed", charged, now)
            return charged, True

        return self._write("credit_commit", run)

    def _commit_late(
        self, conn: Any, reservation_id: str, account: str, amount: int, charge: int
    ) -> int:
        # The answer outlived its hold: the charge is still owed, but only what is available
        # now can pay it (the rest may be held by other requests).
        balance = _read_account(conn, account)
        late = min(charge, amount, balance.available if balance is not None else 0)
        conn.execute(
            "UPDATE x402gate_credit_reservation SET state = 'committed', charged = %s"
            " WHERE id = %s",
            (late, reservation_id),
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

        def run(conn: Any) -> bool:
            if self._locked_reservation(conn, reservation_id) is None:
                return False
            if self._live(conn, reservation_id, now) is None:
                return False
            conn.execute(
                "UPDATE x402gate_credit_reservation SET expires_at = greatest(expires_at, %s)"
                " WHERE id = %s",
                (float(expires_at), reservation_id),
            )
            return True

        return self._write("credit_extend", run)

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")

        def run(conn: Any) -> bool:
            row = self._locked_reservation(conn, reservation_id)
            if row is None:
                return False
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = self._locked_reservation(conn, reservation_id, lock=False)
                return row is not None and row[2] == "released"
            self._end_reservation(conn, reservation_id, live[0], live[1], "released", 0, now)
            return True

        return self._write("credit_release", run)

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)

        def run(conn: Any) -> CreditBalance:
            self._lock(conn, "credit", account)
            self._expire_held(conn, account, now)
            return _read_account(conn, account) or CreditBalance(0, 0, 0, 0)

        return self._write("credit_balance", run)

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        row = self._read(
            "credit_reservation",
            lambda conn: conn.execute(
                "SELECT account, amount, state, charged, expires_at"
                " FROM x402gate_credit_reservation WHERE id = %s",
                (reservation_id,),
            ).fetchone(),
        )
        if row is None:
            return None
        state = "expired" if row[2] == "held" and now >= row[4] else row[2]
        return CreditReservation(row[0], int(row[1]), state, int(row[3]), row[4])

    def credit_reconcile(self, now: float) -> int:
        def accounts(conn: Any) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT account FROM x402gate_credit_reservation"
                " WHERE state = 'held' AND expires_at <= %s LIMIT %s",
                (float(now), self._PURGE_LIMIT),
            ).fetchall()
            return [str(row[0]) for row in rows]

        def expire(account: str) -> int:
            def run(conn: Any) -> int:
                self._lock(conn, "credit", account)
                return self._expire_held(conn, account, now)

            return self._write("credit_reconcile", run)

        # One transaction per account, so other writers get their turn during a large backlog
        # and no transaction holds two accounts' locks.
        moved = 0
        while True:
            batch = self._read("credit_reconcile", accounts)
            moved += sum(expire(account) for account in batch)
            if len(batch) < self._PURGE_LIMIT:
                return moved

    def _locked_reservation(
        self, conn: Any, reservation_id: str, *, lock: bool = True
    ) -> tuple[Any, ...] | None:
        """The reservation's (account, amount, state, charged) row; with ``lock``, after taking
        the id's lock and then its account's (a reservation never changes account)."""
        if lock:
            self._lock(conn, "credit_id", reservation_id)
        row = conn.execute(
            "SELECT account, amount, state, charged FROM x402gate_credit_reservation WHERE id = %s",
            (reservation_id,),
        ).fetchone()
        if row is not None and lock:
            self._lock(conn, "credit", str(row[0]))
        return None if row is None else tuple(row)

    def _live(self, conn: Any, reservation_id: str, now: float) -> tuple[str, int] | None:
        """(account, amount) if the reservation is held and live, after expiring its account."""
        row = conn.execute(
            "SELECT account, amount, expires_at FROM x402gate_credit_reservation"
            " WHERE id = %s AND state = 'held'",
            (reservation_id,),
        ).fetchone()
        if row is None:
            return None
        self._expire_held(conn, row[0], now)
        return (row[0], int(row[1])) if now < row[2] else None

    def _expire_held(self, conn: Any, account: str, now: float) -> int:
        rows = conn.execute(
            "SELECT id, amount FROM x402gate_credit_reservation"
            " WHERE account = %s AND state = 'held' AND expires_at <= %s",
            (account, float(now)),
        ).fetchall()
        for rid, amount in rows:
            self._end_reservation(conn, rid, account, int(amount), "expired", 0, now)
        return len(rows)

    def _end_reservation(
        self,
        conn: Any,
        reservation_id: str,
        account: str,
        amount: int,
        state: str,
        charged: int,
        now: float,
    ) -> None:
        balance = _read_account(conn, account)
        if balance is None or balance.reserved < amount:
            # Only edited rows get here; refusing keeps the ledger from going negative.
            raise StoreError(
                f"PostgreSQL store {self._where}: credit account {account!r} does not hold "
                f"reservation {reservation_id!r}"
            )
        _write_account(
            conn,
            account,
            (
                "UPDATE x402gate_credit_reservation SET state = %s, charged = %s,"
                " finished_at = %s WHERE id = %s",
                (state, charged, float(now), reservation_id),
            ),
            available=balance.available + amount - charged,
            reserved=balance.reserved - amount,
            charged=balance.charged + charged,
        )

    def _purge_credit(self, conn: Any, now: float) -> None:
        if now < self._next_credit_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_credit_reservation WHERE id IN"
            " (SELECT id FROM x402gate_credit_reservation"
            " WHERE expires_at <= %s AND state <> 'held' LIMIT %s FOR UPDATE SKIP LOCKED)",
            (float(now - CREDIT_RECORD_RETENTION_SECONDS), self._PURGE_LIMIT),
        ).rowcount
        self._next_credit_purge = self._purge_after(int(deleted), now)
