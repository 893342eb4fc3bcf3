"""Random credit ledger sequences on every backend must match a plain dict model of base.py.

As test_model.py does for claims, in the manner of fakeredis-py's hypothesis tests: hypothesis
drives top-ups, reserves, extensions, commits, releases, balances, reconciles and clock ticks
into a real store (a real SQLite file, a real redis-server, through several handles) and into
:class:`Model`, and every answer must agree. A *concurrent* step fires a few operations from
several threads at once; their answers must be those of some order of running them one by one
on the model, which then continues from that order's state. Small id and ref alphabets make
repeats, conflicts and late commits common; amounts above 2**64 come up too, and the clock
lands exactly on expiry boundaries. Throughout, no balance is negative and every account
conserves money: ``topped_up == available + reserved + charged``.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from x402gate.stores import CreditBalance, CreditReservation, Store, credit_account

from .conftest import StoreFactory

START = 1_700_000_000.0
BIG = 10**20 + 1  # beyond 64 bits: the digit-by-digit arithmetic of Redis, text in SQLite

PAYERS = st.sampled_from(["0xp1", "0xp2"])
TOPUPS = st.sampled_from([4, 10, 25, BIG])
AMOUNTS = st.sampled_from([1, 2, 3, 5, 8, BIG])
CHARGES = st.sampled_from([0, 1, 2, 3, 6, BIG - 1, 2 * BIG])
# A top-up's ref is mostly its own settlement, retried now and then; "shared" reuses one ref
# for other payers or amounts, which must be refused.
REFS = st.sampled_from(["0", "1", "2", "shared"])
RIDS = st.sampled_from(["r1", "r2", "r3", "r4", "r5"])
TTLS = st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0])
HANDLES = 3
EXAMPLE_SPAN = 1000.0  # seconds: more than any example's clock moves

Op = tuple[Any, ...]


def writes(payers: st.SearchStrategy[str], rids: st.SearchStrategy[str]) -> st.SearchStrategy[Op]:
    return st.one_of(
        st.tuples(st.just("topup"), payers, TOPUPS, REFS),
        st.tuples(st.just("reserve"), payers, AMOUNTS, rids, TTLS),
        st.tuples(st.just("commit"), rids, CHARGES),
        st.tuples(st.just("release"), rids),
        st.tuples(st.just("extend"), rids, TTLS),
    )


WRITES = writes(PAYERS, RIDS)
# Concurrent requests mostly of one payer on few ids: where orders give different answers.
CONCURRENT_WRITES = writes(st.just("0xp1"), st.sampled_from(["r1", "r2", "r3"]))


@dataclass
class Account:
    available: int = 0
    reserved: int = 0
    topped_up: int = 0
    charged: int = 0


@dataclass
class Reservation:
    account: str
    amount: int
    expires_at: float
    state: str = "held"  # as stored: a held one past expires_at is moved lazily, as stores do
    charged: int = 0


@dataclass
class Model:
    """The ledger rules of stores/base.py, as directly as they can be written.

    It also moves expired reservations exactly when every backend does (in any operation on
    their account, and in reconcile), so that reconcile's count can be compared too.
    """

    accounts: dict[str, Account] = field(default_factory=dict)
    topups: dict[str, tuple[str, int]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)

    def _end(self, r: Reservation, state: str, charged: int) -> None:
        acct = self.accounts[r.account]
        acct.reserved -= r.amount
        acct.available += r.amount - charged
        acct.charged += charged
        r.state, r.charged = state, charged

    def _expire(self, account: str, now: float) -> None:
        for r in self.reservations.values():
            if r.account == account and r.state == "held" and now >= r.expires_at:
                self._end(r, "expired", 0)

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        applied = self.topups.get(ref)
        if applied is not None and applied != (account, amount):
            raise ValueError("ref already applied")
        acct = self.accounts.setdefault(account, Account())
        self._expire(account, now)
        if applied is None:
            self.topups[ref] = (account, amount)
            acct.available += amount
            acct.topped_up += amount
        return acct.available

    def credit_reserve(
        self, account: str, amount: int, rid: str, expires_at: float, now: float
    ) -> bool:
        self._expire(account, now)
        known = self.reservations.get(rid)
        if known is not None:
            return (
                known.state == "held"
                and now < known.expires_at
                and (known.account, known.amount) == (account, amount)
            )
        acct = self.accounts.get(account)
        if acct is None or acct.available < amount:
            return False
        self.reservations[rid] = Reservation(account, amount, expires_at)
        acct.available -= amount
        acct.reserved += amount
        return True

    def _live(self, rid: str, now: float) -> Reservation | None:
        r = self.reservations.get(rid)
        if r is None or r.state != "held":
            return None
        self._expire(r.account, now)
        return r if r.state == "held" else None

    def credit_commit(self, rid: str, charge: int, now: float) -> int:
        r = self._live(rid, now)
        if r is None:
            known = self.reservations.get(rid)
            if known is not None and known.state == "expired":
                # Late: charged from what is available now, never from other holds.
                acct = self.accounts[known.account]
                late = min(charge, known.amount, acct.available)
                acct.available -= late
                acct.charged += late
                known.state, known.charged = "committed", late
                return late
            return known.charged if known is not None and known.state == "committed" else 0
        charged = min(charge, r.amount)
        self._end(r, "committed", charged)
        return charged

    def credit_extend(self, rid: str, expires_at: float, now: float) -> bool:
        r = self._live(rid, now)
        if r is None:
            return False
        r.expires_at = max(r.expires_at, expires_at)
        return True

    def credit_release(self, rid: str, now: float) -> bool:
        r = self._live(rid, now)
        if r is None:
            known = self.reservations.get(rid)
            return known is not None and known.state == "released"
        self._end(r, "released", 0)
        return True

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        self._expire(account, now)
        a = self.accounts.get(account, Account())
        return CreditBalance(a.available, a.reserved, a.topped_up, a.charged)

    def credit_reservation(self, rid: str, now: float) -> CreditReservation | None:
        r = self.reservations.get(rid)
        if r is None:
            return None
        state = "expired" if r.state == "held" and now >= r.expires_at else r.state
        return CreditReservation(r.account, r.amount, state, r.charged, r.expires_at)

    def credit_reconcile(self, now: float) -> int:
        expired = [
            r for r in self.reservations.values() if r.state == "held" and now >= r.expires_at
        ]
        for r in expired:
            self._end(r, "expired", 0)
        return len(expired)


def outcome(answer: object) -> str:
    """A coarse class of an answer, for hypothesis' statistics (--hypothesis-show-statistics)."""
    if isinstance(answer, bool | str):
        return repr(answer)
    return "0" if answer == 0 else "a positive amount"


class CreditMachine(RuleBasedStateMachine):
    handles: ClassVar[list[Store]]
    pool: ClassVar[ThreadPoolExecutor]
    runs: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        # One store serves every example; accounts, refs and ids of their own start it empty.
        self.run = next(self.runs)
        self.model = Model()
        # Each example starts earlier than the one before (and lasts far less than the step),
        # so the live reservations earlier examples left behind never come due in this one:
        # reconcile, which sees the whole store, answers for this example's alone.
        self.start = START - EXAMPLE_SPAN * self.run
        self.now = self.start

    def account(self, payer: str) -> str:
        return credit_account("eip155:8453", f"0x{self.run:x}a55e7", payer)

    def name(self, value: str) -> str:
        return f"run{self.run}-{value}"

    def apply(self, target: Store | Model, op: Op) -> object:
        """Run one write on the store or the model; a refused call answers its error's name."""
        kind, *args = op
        try:
            if kind == "topup":
                payer, amount, ref = args
                ref = "shared" if ref == "shared" else f"{payer}-{amount}-{ref}"
                return target.credit_topup(self.account(payer), amount, self.name(ref), self.now)
            if kind == "reserve":
                payer, amount, rid, ttl = args
                return target.credit_reserve(
                    self.account(payer), amount, self.name(rid), self.now + ttl, self.now
                )
            if kind == "commit":
                rid, charge = args
                return target.credit_commit(self.name(rid), charge, self.now)
            if kind == "extend":
                rid, ttl = args
                return target.credit_extend(self.name(rid), self.now + ttl, self.now)
            (rid,) = args
            return target.credit_release(self.name(rid), self.now)
        except ValueError as exc:
            return type(exc).__name__

    @initialize(offset=st.sampled_from([0.0, 0.25, 0.5]))
    def start_clock(self, offset: float) -> None:
        self.now = self.start + offset

    @rule(op=WRITES, handle=st.integers(0, HANDLES - 1))
    def write(self, op: Op, handle: int) -> None:
        got = self.apply(self.handles[handle], op)
        expected = self.apply(self.model, op)
        assert got == expected, (op, got, expected)
        event(f"{op[0]} answered {outcome(got)}")

    @rule(ops=st.lists(CONCURRENT_WRITES, min_size=2, max_size=HANDLES + 1))
    def concurrently(self, ops: list[Op]) -> None:
        # Several requests at the same moment, each through its own handle (connection,
        # client): released together by a barrier.
        barrier = threading.Barrier(len(ops))

        def one(i: int) -> object:
            barrier.wait(30)
            return self.apply(self.handles[i % HANDLES], ops[i])

        futures = [self.pool.submit(one, i) for i in range(len(ops))]
        got = [future.result(60) for future in futures]
        orders: dict[tuple[object, ...], list[Model]] = {}
        for order in itertools.permutations(range(len(ops))):
            model = copy.deepcopy(self.model)
            answers: list[object] = [None] * len(ops)
            for i in order:
                answers[i] = self.apply(model, ops[i])
            orders.setdefault(tuple(answers), []).append(model)
        matching = orders.get(tuple(got))
        assert matching, f"{ops} answered {got}, no serial order does: {sorted(orders, key=str)}"
        # Orders with the same answers may still leave different states (rarely): tell them
        # apart by what the store shows, as a client would.
        states = [m for i, m in enumerate(matching) if m not in matching[:i]]
        if len(states) > 1:
            seen = self.observe(self.handles[0], ops)
            states = [m for m in states if self.observe(m, ops) == seen]
        assert len(states) == 1, (ops, got, states)
        self.model = states[0]
        event(f"concurrent answers: {len(orders)} possible, {len(matching)} orders matched")

    def observe(self, target: Store | Model, ops: list[Op]) -> list[object]:
        accounts = {self.account(op[1]) for op in ops if op[0] in ("topup", "reserve")}
        rids = {self.name(op[3] if op[0] == "reserve" else op[1]) for op in ops if op[0] != "topup"}
        return [target.credit_balance(a, self.now) for a in sorted(accounts)] + [
            target.credit_reservation(r, self.now) for r in sorted(rids)
        ]

    @rule(payer=PAYERS, handle=st.integers(0, HANDLES - 1))
    def balance(self, payer: str, handle: int) -> None:
        got = self.handles[handle].credit_balance(self.account(payer), self.now)
        assert got == self.model.credit_balance(self.account(payer), self.now)
        assert min(got.available, got.reserved, got.charged) >= 0
        assert got.topped_up == got.available + got.reserved + got.charged

    @rule(rid=RIDS)
    def credit_reservation(self, rid: str) -> None:
        got = self.handles[0].credit_reservation(self.name(rid), self.now)
        assert got == self.model.credit_reservation(self.name(rid), self.now)

    @rule(handle=st.integers(0, HANDLES - 1))
    def reconcile(self, handle: int) -> None:
        got = self.handles[handle].credit_reconcile(self.now)
        assert got == self.model.credit_reconcile(self.now)
        event(f"reconcile moved {min(got, 2)}{'+' if got >= 2 else ''}")

    @rule(step=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def tick(self, step: float) -> None:
        self.now += step

    @invariant()
    def money_is_conserved(self) -> None:
        for acct in self.model.accounts.values():
            assert min(acct.available, acct.reserved, acct.charged) >= 0
            assert acct.topped_up == acct.available + acct.reserved + acct.charged
        held = sum(r.amount for r in self.model.reservations.values() if r.state == "held")
        assert held == sum(a.reserved for a in self.model.accounts.values())


def test_every_backend_matches_the_credit_model(make_handle: StoreFactory) -> None:
    handles = [make_handle() for _ in range(HANDLES)]
    with ThreadPoolExecutor(max_workers=HANDLES + 1) as pool:
        machine = type(
            "Machine",
            (CreditMachine,),
            {"handles": handles, "pool": pool, "runs": itertools.count()},
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=150,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
