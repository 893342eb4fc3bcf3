"""A reservation whose answer outlives it: kept alive while it runs, and never free if it dies.

Every backend (memory, a SQLite file shared by several handles, a real Redis): a live
reservation can be extended; a commit that arrives after the expiry still charges, but only from
what is available at that moment, so money the expiry returned and another request reserved is
never taken twice.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from x402gate.stores import CreditBalance, CreditReservation, Store, open_store

from ._credit import ACCOUNT, NOW, conserved, late_race
from .conftest import StoreFactory

EXP = NOW + 60


def test_an_extended_reservation_outlives_its_first_expiry(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    assert store.credit_reserve(ACCOUNT, 100, "r1", EXP, NOW)
    assert store.credit_extend("r1", EXP + 60, EXP - 1) is True
    # Past the first expiry the money is still held: nobody else can reserve it.
    assert store.credit_balance(ACCOUNT, EXP + 30) == CreditBalance(0, 100, 100, 0)
    assert store.credit_reserve(ACCOUNT, 1, "r2", EXP + 90, EXP + 30) is False
    assert store.credit_reconcile(EXP + 30) == 0
    assert store.credit_commit("r1", 70, EXP + 30) == 70
    assert store.credit_balance(ACCOUNT, EXP + 30) == CreditBalance(30, 0, 100, 70)


def test_extend_never_shortens_and_refuses_what_is_not_held(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 10, "r1", EXP, NOW)
    assert store.credit_extend("r1", NOW + 5, NOW) is True  # earlier: kept as it was
    assert store.credit_reservation("r1", NOW) == CreditReservation(ACCOUNT, 10, "held", 0, EXP)
    store.credit_reserve(ACCOUNT, 10, "done", EXP, NOW)
    store.credit_commit("done", 3, NOW)
    store.credit_reserve(ACCOUNT, 10, "gone", EXP, NOW)
    store.credit_release("gone", NOW)
    for rid in ("done", "gone", "unknown"):
        assert store.credit_extend(rid, EXP + 600, NOW) is False
        assert store.credit_extend(rid, EXP + 600, NOW) is False
    assert store.credit_reservation("done", NOW) == CreditReservation(
        ACCOUNT, 10, "committed", 3, EXP
    )
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(87, 10, 100, 3)


def test_a_commit_after_expiry_charges_what_is_still_available(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 100, "r1", EXP, NOW)
    assert store.credit_balance(ACCOUNT, EXP + 1).available == 100  # expired: back to the payer
    assert store.credit_commit("r1", 40, EXP + 1) == 40  # the answer did run: it is charged
    assert store.credit_commit("r1", 90, EXP + 2) == 40  # once
    assert store.credit_release("r1", EXP + 2) is False
    assert store.credit_reservation("r1", EXP + 2) == CreditReservation(
        ACCOUNT, 100, "committed", 40, EXP
    )
    assert store.credit_balance(ACCOUNT, EXP + 2) == CreditBalance(60, 0, 100, 40)


def test_a_late_commit_never_takes_money_another_request_reserved(store: Store) -> None:
    # r1 expires while its answer still runs; r2 reserves the returned money; r1 commits late.
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 80, "r1", EXP, NOW)
    assert store.credit_reserve(ACCOUNT, 90, "r2", EXP + 60, EXP + 1) is True
    assert store.credit_commit("r1", 80, EXP + 2) == 10  # only what is left available
    assert store.credit_balance(ACCOUNT, EXP + 2) == CreditBalance(0, 90, 100, 10)
    assert store.credit_commit("r2", 90, EXP + 3) == 90  # r2's hold was never touched
    assert store.credit_balance(ACCOUNT, EXP + 3) == CreditBalance(0, 0, 100, 100)
    # Nothing left: a late commit charges nothing rather than overdrawing.
    store.credit_topup(ACCOUNT, 50, "tx2", EXP + 4)
    store.credit_reserve(ACCOUNT, 50, "r3", EXP + 10, EXP + 4)
    store.credit_reserve(ACCOUNT, 50, "r4", EXP + 600, EXP + 11)
    assert store.credit_commit("r3", 50, EXP + 12) == 0
    assert store.credit_balance(ACCOUNT, EXP + 12) == CreditBalance(0, 50, 150, 100)
    assert conserved(store, ACCOUNT, EXP + 12)


@pytest.mark.parametrize("rounds", [40])
def test_late_commits_racing_new_reservations_never_overdraw(
    make_handle: StoreFactory, rounds: int
) -> None:
    # Handles on one store (threads on one MemoryStore, connections to one SQLite file,
    # clients of one Redis): each round an expired reservation commits late on one handle
    # while another handle reserves the same money. Whoever wins, the money is spent once.
    store = make_handle()
    late, fresh = make_handle(), make_handle()
    store.credit_topup(ACCOUNT, rounds * 10, "tx", NOW)
    for r in range(rounds):
        assert store.credit_reserve(ACCOUNT, 10, f"old{r}", EXP, NOW)
    after = EXP + 1
    barrier = threading.Barrier(2)
    charged: list[int] = []
    reserved: list[bool] = []

    def commit_late() -> None:
        for r in range(rounds):
            barrier.wait(30)
            charged.append(late.credit_commit(f"old{r}", 10, after))

    def reserve() -> None:
        for r in range(rounds):
            barrier.wait(30)
            reserved.append(fresh.credit_reserve(ACCOUNT, 10, f"new{r}", EXP + 600, after))

    threads = [threading.Thread(target=commit_late), threading.Thread(target=reserve)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(charged) == len(reserved) == rounds
    assert all(c in (0, 10) for c in charged)
    balance = store.credit_balance(ACCOUNT, after)
    assert balance.charged == sum(charged)
    assert balance.reserved == 10 * sum(reserved)
    assert sum(charged) + 10 * sum(reserved) <= rounds * 10  # each unit spent at most once
    assert conserved(store, ACCOUNT, after)


def test_processes_committing_late_and_reserving_on_one_sqlite_file_spend_once(
    tmp_path: Path,
) -> None:
    # Two processes commit expired reservations late while two others reserve the money the
    # expiry returned, on one SQLite file: every unit is spent once, by one of them.
    url = f"sqlite:///{tmp_path}/late.db"
    rounds = 40
    with open_store(url) as store:
        store.credit_topup(ACCOUNT, rounds * 10, "tx", NOW)
        for r in range(rounds):
            assert store.credit_reserve(ACCOUNT, 10, f"old{r}", EXP, NOW)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(4)
        results = ctx.Queue()
        jobs = [
            ("commit", [f"old{r}" for r in range(0, rounds, 2)]),
            ("commit", [f"old{r}" for r in range(1, rounds, 2)]),
            ("reserve", [f"a{r}" for r in range(rounds)]),
            ("reserve", [f"b{r}" for r in range(rounds)]),
        ]
        procs = [
            ctx.Process(target=late_race, args=(url, mode, ids, barrier, results))
            for mode, ids in jobs
        ]
        for proc in procs:
            proc.start()
        try:
            answers = [results.get(timeout=60) for _ in procs]
        finally:
            for proc in procs:
                proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * len(procs)
        assert all(mode != "error" for mode, _ in answers), answers
        charged = sum(sum(got) for mode, got in answers if mode == "commit")
        reserved = 10 * sum(sum(got) for mode, got in answers if mode == "reserve")
        assert all(c in (0, 10) for mode, got in answers if mode == "commit" for c in got)
        balance = store.credit_balance(ACCOUNT, NOW + 62)
        assert (balance.charged, balance.reserved) == (charged, reserved)
        assert charged + reserved == rounds * 10  # all of it spent, none of it twice
        assert balance.available == 0
        assert conserved(store, ACCOUNT, NOW + 62)
