"""Payments in flight per payer: the rules on every backend, and atomicity under real races."""

from __future__ import annotations

import multiprocessing
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from x402gate.stores import Store, open_store
from x402gate.stores.base import IN_FLIGHT_UNSETTLED

from ._in_flight_race import ACCOUNT, AMOUNT, BLOCK, EXPIRES, NOW, burst
from .conftest import StoreFactory

OTHER = "eip155:8453|0xasset|0xsomeoneelse"


def admit(
    store: Store, entry: str, amount: int = AMOUNT, balance: int = 3 * AMOUNT, **kw: Any
) -> bool:
    return store.in_flight_admit(
        kw.get("account", ACCOUNT),
        entry,
        amount,
        balance,
        kw.get("block", BLOCK),
        kw.get("expires_at", EXPIRES),
        kw.get("now", NOW),
    )


def test_admits_while_the_balance_covers_every_payment_in_flight(store: Store) -> None:
    assert [admit(store, f"e{i}") for i in range(5)] == [True, True, True, False, False]
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == 3 * AMOUNT
    # Another payer's balance is its own.
    assert admit(store, "x", account=OTHER, balance=AMOUNT)
    assert not admit(store, "y", account=OTHER, balance=AMOUNT)
    # A payment larger than what is left is refused although a smaller one would fit.
    assert store.in_flight_release(ACCOUNT, "e0")
    assert not admit(store, "big", amount=AMOUNT + 1)
    assert admit(store, "e5")
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == 3 * AMOUNT


def test_repeating_an_admission_never_holds_twice(store: Store) -> None:
    assert admit(store, "e1")
    assert admit(store, "e1")
    assert not admit(store, "e1", amount=AMOUNT + 1)  # same id, other amount: a bug, refused
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == AMOUNT
    assert store.in_flight_release(ACCOUNT, "e1")
    assert not store.in_flight_release(ACCOUNT, "e1")
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == 0


def test_a_settled_payment_counts_only_against_readings_of_earlier_blocks(store: Store) -> None:
    assert admit(store, "e1", balance=AMOUNT)
    assert store.in_flight_settle(ACCOUNT, "e1", BLOCK + 5, NOW + 120, NOW)
    # A reading before the settlement block still shows the money: the payment holds it.
    assert store.in_flight_total(ACCOUNT, BLOCK + 4, NOW) == AMOUNT
    assert not admit(store, "e2", balance=AMOUNT, block=BLOCK + 4)
    # From the settlement block on, the balance already reflects it.
    assert store.in_flight_total(ACCOUNT, BLOCK + 5, NOW) == 0
    assert admit(store, "e2", balance=AMOUNT, block=BLOCK + 5)
    # A settlement whose block is unknown counts against every reading until it lapses.
    assert store.in_flight_settle(ACCOUNT, "e2", IN_FLIGHT_UNSETTLED, NOW + 120, NOW)
    assert store.in_flight_total(ACCOUNT, 10**12, NOW) == AMOUNT
    assert store.in_flight_total(ACCOUNT, 10**12, NOW + 120) == 0
    assert not store.in_flight_settle(ACCOUNT, "missing", BLOCK, NOW + 120, NOW)


def test_holds_lapse_so_a_crashed_process_never_locks_a_payer_out(store: Store) -> None:
    assert admit(store, "e1", balance=AMOUNT, expires_at=NOW + 30)
    assert not admit(store, "e2", balance=AMOUNT, now=NOW + 29)
    assert admit(store, "e2", balance=AMOUNT, now=NOW + 30, expires_at=NOW + 90)
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW + 30) == AMOUNT
    assert not store.in_flight_settle(ACCOUNT, "e2", BLOCK, NOW + 200, NOW + 90)


def test_amounts_are_exact_integers_up_to_uint256(store: Store) -> None:
    huge = 2**255
    assert admit(store, "a", amount=huge, balance=2**256 - 1)
    assert not admit(store, "b", amount=huge, balance=2**256 - 1)
    assert admit(store, "b", amount=huge - 1, balance=2**256 - 1)
    assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == 2**256 - 1


def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        admit(store, "e", amount=0)
    with pytest.raises(TypeError):
        admit(store, "e", amount=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        admit(store, "e", block=-1)
    with pytest.raises(ValueError):
        admit(store, "e", account="not-an-account")


# -- atomicity -----------------------------------------------------------------------------

K = 7  # payments the balance covers
BALANCE = K * AMOUNT


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def collect(results: Any, n: int, get: Any) -> list[str]:
    won: list[str] = []
    for _ in range(n):
        worker, outcome = get(results)
        assert not isinstance(outcome, str), (worker, outcome)
        won += outcome
    return won


def run_threads(targets: list[str | Store], tries: int) -> list[str]:
    barrier = threading.Barrier(len(targets))
    results: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(target=burst, args=(t, i, tries, BALANCE, barrier, results))
        for i, t in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return collect(results, len(targets), lambda q: q.get_nowait())


@pytest.mark.usefixtures("fast_thread_switching")
def test_16_threads_on_one_handle_admit_exactly_what_the_balance_covers(
    make_handle: StoreFactory,
) -> None:
    shared = make_handle()
    for _ in range(5):  # rounds: each starts from an empty account
        won = run_threads([shared] * 16, tries=4)
        assert len(won) == K
        assert shared.in_flight_total(ACCOUNT, BLOCK, NOW) == BALANCE
        for entry in won:
            assert shared.in_flight_release(ACCOUNT, entry)


@pytest.mark.usefixtures("fast_thread_switching")
def test_12_threads_with_a_handle_each_admit_exactly_what_the_balance_covers(
    make_handle: StoreFactory,
) -> None:
    # A connection per thread (a client per host for Redis): the backend's own atomicity.
    handles: list[str | Store] = [make_handle() for _ in range(12)]
    won = run_threads(handles, tries=5)
    assert len(won) == K
    assert handles[0].in_flight_total(ACCOUNT, BLOCK, NOW) == BALANCE  # type: ignore[union-attr]


@pytest.mark.slow
def test_6_processes_on_one_sqlite_file_admit_exactly_what_the_balance_covers(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/in-flight.db"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=burst, args=(url, i, 6, BALANCE, barrier, results)) for i in range(6)
    ]
    for proc in procs:
        proc.start()
    try:
        won = collect(results, 6, lambda q: q.get(timeout=120))
    finally:
        for proc in procs:
            proc.join(30)
    assert [proc.exitcode for proc in procs] == [0] * 6
    assert len(won) == K
    with open_store(url) as store:
        assert store.in_flight_total(ACCOUNT, BLOCK, NOW) == BALANCE
