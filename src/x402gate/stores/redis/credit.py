"""The credit ledger in the Redis store: accounts, top-ups and reservations, under
``<prefix>credit:``.

A hash per account (``acct:<account>``), per top-up ref (``topup:<ref>``) and per reservation
(``res:<id>``), a sorted set of each account's held reservations by ``expires_at``
(``held:<account>``) and one of all of them (``expiry``) for reconciling. The scripts add and
compare amounts as decimal text (``lua/credit_prelude.lua``). The rules are those of
:class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..checks import (
    check_credit_account,
    check_credit_amount,
    check_credit_id,
    check_credit_reserve,
)
from ..journal import JournalRow
from ..records import MAX_CREDIT_AMOUNT, CreditBalance, CreditReservation
from .connection import text
from .journal import RedisJournal
from .scripts import CREDIT, script

__all__ = ["RedisCredit"]

_RECONCILE_BATCH = 500


class RedisCredit(RedisJournal):
    """Top-ups, reservations and their commit, release, extension and expiry."""

    def _journal_tags(self) -> list[str]:
        return [*super()._journal_tags(), self._credit_prefix[:-1]]

    def _register_scripts(self, client: Any) -> None:
        super()._register_scripts(client)
        self._credit_topup_script = client.register_script(script("credit_topup", CREDIT))
        self._credit_reserve_script = client.register_script(script("credit_reserve", CREDIT))
        self._credit_finish_script = client.register_script(script("credit_finish", CREDIT))
        self._credit_balance_script = client.register_script(script("credit_balance", CREDIT))
        self._credit_extend_script = client.register_script(script("credit_extend", CREDIT))
        self._credit_reconcile_script = client.register_script(script("credit_reconcile", CREDIT))

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")
        answer = self._credit(
            "credit_topup",
            self._credit_topup_script,
            [self._credit_key("acct", account), self._credit_key("topup", ref)],
            now,
            account,
            str(amount),
            ref,
            str(MAX_CREDIT_AMOUNT),
        )
        outcome = text(answer[0])
        if outcome == "conflict":
            raise ValueError(
                f"credit top-up ref {ref!r:.80} was already applied to another account or amount"
            )
        if outcome == "overflow":
            raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
        return int(answer[1])

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)
        answer = self._credit(
            "credit_reserve",
            self._credit_reserve_script,
            [self._credit_key("acct", account), self._credit_key("res", reservation_id)],
            now,
            account,
            str(amount),
            reservation_id,
            repr(float(expires_at)),
        )
        return int(answer) == 1

    def credit_commit(
        self, reservation_id: str, charge: int, now: float, *, journal: JournalRow | None = None
    ) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)
        answer = self._credit(
            "credit_commit",
            self._credit_finish_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
            str(charge),
            *self._journal_args(journal, self._credit_prefix[:-1]),
        )
        self._journal_after(journal)
        return int(answer)

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        answer = self._credit(
            "credit_release",
            self._credit_finish_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
        )
        return int(answer) == 1

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        answer = self._credit(
            "credit_extend",
            self._credit_extend_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
            repr(float(expires_at)),
        )
        return int(answer) == 1

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)
        answer = self._credit(
            "credit_balance",
            self._credit_balance_script,
            [self._credit_key("acct", account)],
            now,
            account,
            durable=False,
        )
        return CreditBalance(*(0 if value is None else int(value) for value in answer))

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        try:
            row = self.client.hmget(
                self._credit_key("res", reservation_id),
                ["account", "amount", "state", "charged", "expires_at"],
            )
        except self._redis_errors as exc:
            self._fail("credit_reservation", exc)
        if row[2] is None:
            return None
        account, amount, state, charged, expires = (text(value) for value in row)
        expires_at = float(expires)
        if state == "held" and now >= expires_at:
            state = "expired"
        return CreditReservation(account, int(amount), state, int(charged), expires_at)

    def credit_reconcile(self, now: float) -> int:
        moved = 0
        while True:
            answer = self._credit(
                "credit_reconcile",
                self._credit_reconcile_script,
                [f"{self._credit_prefix}expiry"],
                now,
                _RECONCILE_BATCH,
            )
            moved += int(answer[0])
            if int(answer[1]) < _RECONCILE_BATCH:
                return moved
