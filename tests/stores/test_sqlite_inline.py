"""The SQLite store's calls from async code: on the event loop when they cannot wait, in a
worker thread otherwise (a write lock held by another connection, an fsync, a checkpoint)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from x402gate._serial import SerialWorker
from x402gate.stores import credit_account
from x402gate.stores.calls import WouldBlock, call_store
from x402gate.stores.sqlite import SQLiteStore

NOW = 1_700_000_000.0
ACCOUNT = credit_account("eip155:8453", "0x" + "cd" * 20, "0x" + "ab" * 20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "inline.db")
    store.ping()
    store.credit_topup(ACCOUNT, 1_000_000, "topup-1", NOW)
    yield store
    store.close()


def test_ledger_steps_run_on_the_loops_thread(store: SQLiteStore) -> None:
    begun: list[int] = []  # the thread of each transaction, in order
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(
        lambda statement: (
            begun.append(threading.get_ident()) if statement == "BEGIN IMMEDIATE" else None
        )
    )

    async def steps() -> tuple[int, bool, int, int]:
        loop_thread = threading.get_ident()
        await call_store(store, store.credit_topup, ACCOUNT, 1_000, "topup-2", NOW)
        reserved = await call_store(store, store.credit_reserve, ACCOUNT, 500, "r1", NOW + 60, NOW)
        charged = await call_store(store, store.credit_commit, "r1", 300, NOW)
        balance = await call_store(store, store.credit_balance, ACCOUNT, NOW)
        return loop_thread, reserved, charged, balance.available

    loop_thread, reserved, charged, available = asyncio.run(steps())
    conn.set_trace_callback(None)
    assert (reserved, charged, available) == (True, 300, 1_001_000 - 300)
    # The reservation and its commit (synchronous=normal: no fsync) on the loop's thread; the
    # top-up and the balance's expiry pass (committed with fsync) in a worker thread.
    on_loop = [thread == loop_thread for thread in begun]
    assert on_loop == [False, True, True, False]


def test_a_write_lock_held_elsewhere_sends_the_call_to_a_thread(store: SQLiteStore) -> None:
    """Another connection (another process, in production) holds the write lock: the inline
    attempt changes nothing and refuses at once; the worker thread waits for the lock and
    then reserves, exactly once."""
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with store.inline(), pytest.raises(WouldBlock):
        store.credit_reserve(ACCOUNT, 500, "r1", NOW + 60, NOW)

    async def reserve() -> bool:
        task = asyncio.ensure_future(
            call_store(store, store.credit_reserve, ACCOUNT, 500, "r1", NOW + 60, NOW)
        )
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting in its thread, while the loop goes on
        other.execute("COMMIT")
        return await task

    with closing(other):
        assert asyncio.run(reserve()) is True
    balance = store.credit_balance(ACCOUNT, NOW)
    assert (balance.available, balance.reserved) == (1_000_000 - 500, 500)


def test_writes_that_fsync_never_run_inline(store: SQLiteStore) -> None:
    with store.inline(), pytest.raises(WouldBlock) as refused:
        store.credit_topup(ACCOUNT, 5, "topup-2", NOW)  # money in: synchronous=full
    assert not refused.value.busy  # it would wait itself: straight to the worker thread
    assert store.credit_balance(ACCOUNT, NOW).topped_up == 1_000_000
    with store.inline():
        assert store.credit_reserve(ACCOUNT, 5, "r1", NOW + 60, NOW) is True


def test_a_busy_store_lock_sends_the_call_to_a_thread(store: SQLiteStore) -> None:
    """A worker thread is inside a transaction (the store's own lock is held): the loop does
    not wait for it."""
    store._lock.acquire()
    try:
        with store.inline(), pytest.raises(WouldBlock):
            store.credit_balance(ACCOUNT, NOW)
        with store.inline(), pytest.raises(WouldBlock) as busy:
            store.credit_reserve(ACCOUNT, 5, "r1", NOW + 60, NOW)  # no fsync of its own
        assert busy.value.busy  # only another thread's transaction stands in the way
    finally:
        store._lock.release()


def test_checkpoints_keep_the_wal_bounded(tmp_path: Path, store: SQLiteStore) -> None:
    """SQLite's own checkpoint is off on the store's connection (it would fsync in the call
    that commits, on the loop); the store checkpoints in a thread of its own instead."""
    page = store._conn.execute("PRAGMA page_size").fetchone()[0]  # type: ignore[union-attr]
    threads_before = threading.active_count()

    async def spend() -> None:
        for i in range(600):
            rid = f"r{i}"
            assert await call_store(store, store.credit_reserve, ACCOUNT, 1, rid, NOW + 60, NOW)
            await call_store(store, store.credit_commit, rid, 1, NOW)

    asyncio.run(spend())
    deadline = time.monotonic() + 10
    while store._checkpointing and time.monotonic() < deadline:
        time.sleep(0.01)
    wal = Path(f"{store.path}-wal").stat().st_size
    # 1200 ledger transactions write about 4800 pages; checkpoints let the WAL start over.
    assert wal < 2000 * page, wal
    assert store.credit_balance(ACCOUNT, NOW).charged == 600
    assert threading.active_count() <= threads_before + 1  # the loop's executor aside


def test_a_checkpoint_waits_for_the_disk_without_the_store_lock(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint copies the WAL first on a connection of its own, the store's lock free
    (calls go on meanwhile), then under the lock only what was written since: afterwards the
    whole WAL is in the database file, so the next write starts it over."""
    passes: list[tuple[str, bool]] = []  # (which connection, the store's lock held)
    real_connect = sqlite3.connect

    def traced(name: str) -> Callable[[str], None]:
        def trace(statement: str) -> None:
            if "wal_checkpoint" in statement:
                passes.append((name, store._lock.locked()))

        return trace

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        conn.set_trace_callback(traced("own"))
        return conn

    for i in range(20):
        assert store.credit_reserve(ACCOUNT, 1, f"r{i}", NOW + 60, NOW)
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(traced("store's"))
    monkeypatch.setattr(sqlite3, "connect", connect)
    try:
        store._checkpoint()
    finally:
        conn.set_trace_callback(None)
    assert passes == [("own", False), ("store's", True)]
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, copied) == (0, frames) and frames > 0
    assert store.credit_balance(ACCOUNT, NOW).reserved == 20


def test_a_call_behind_the_worker_waits_for_it_and_then_runs_inline(store: SQLiteStore) -> None:
    """One call had to go to the worker thread (the store's lock was held, as by a
    checkpoint): the next call waits for it on the loop and then runs inline, so the worker
    does not stay busy with every call after it."""
    worker = SerialWorker("test-store")
    begun: list[int] = []
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(
        lambda statement: (
            begun.append(threading.get_ident()) if statement == "BEGIN IMMEDIATE" else None
        )
    )

    async def two_reservations() -> tuple[int, bool, bool]:
        loop_thread = threading.get_ident()
        store._lock.acquire()  # held elsewhere: the first call cannot run inline
        first = asyncio.ensure_future(
            call_store(store, store.credit_reserve, ACCOUNT, 5, "r1", NOW + 60, NOW, worker=worker)
        )
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(
            call_store(store, store.credit_reserve, ACCOUNT, 7, "r2", NOW + 60, NOW, worker=worker)
        )
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        store._lock.release()
        return loop_thread, await first, await second

    try:
        loop_thread, first, second = asyncio.run(two_reservations())
    finally:
        conn.set_trace_callback(None)
        worker.close()
    assert (first, second) == (True, True)
    assert [thread == loop_thread for thread in begun] == [False, True]
    assert store.credit_balance(ACCOUNT, NOW).reserved == 12
