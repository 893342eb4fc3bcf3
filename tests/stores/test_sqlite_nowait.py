"""The SQLite store's inline attempts: run now when nothing waits, else refuse with nothing done.

``call_nowait`` is what lets the gate run a channel step on its event loop; it must never wait
(another thread holding the connection, another process holding the file's write lock, a purge
due) and must leave the file exactly as it was when it refuses.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from x402gate.stores import open_store
from x402gate.stores.base import WouldWait
from x402gate.stores.channels import ChannelBeginOutcome
from x402gate.stores.sqlite import SQLiteStore

from ._channel_race import BALANCE, CHANNEL, CONFIG, NOW, PRICE, SIGNATURE


def _store(tmp_path: Path, **options: str) -> SQLiteStore:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    store = open_store(f"sqlite:///{tmp_path / 'nowait.db'}" + (f"?{query}" if query else ""))
    assert isinstance(store, SQLiteStore)
    store.channel_sync(
        CHANNEL,
        CONFIG,
        balance=BALANCE,
        total_claimed=0,
        withdraw_requested_at=0,
        refund_nonce=0,
        now=NOW,
    )
    return store


def _begin(store: SQLiteStore, token: str) -> ChannelBeginOutcome:
    return store.channel_begin(
        CHANNEL,
        token,
        base=0,
        max_claimable=PRICE,
        signature=SIGNATURE,
        expires_at=NOW + 60,
        now=NOW,
    ).outcome


def test_a_free_store_runs_the_call_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    started = time.perf_counter()
    assert store.call_nowait(_begin, store, "t1") is ChannelBeginOutcome.STARTED
    state = store.call_nowait(store.channel_commit, CHANNEL, "t1", PRICE, NOW)
    elapsed = time.perf_counter() - started
    assert state is not None and state.charged == PRICE and state.step is None
    assert elapsed < 1.0
    conn = store._connection()
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    # The store waits as before outside an attempt: its busy timeout and checkpoints are back.
    assert store.channel_get(CHANNEL) is not None
    _begin_at(store, "t2", 1)
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    store.close()


def test_fsyncs_and_checkpoints_are_left_to_the_waiting_path(tmp_path: Path) -> None:
    store = _store(tmp_path)  # synchronous=full: a sync of chain figures fsyncs
    with pytest.raises(WouldWait):
        store.call_nowait(
            lambda: store.channel_sync(
                CHANNEL,
                CONFIG,
                balance=BALANCE * 2,
                total_claimed=0,
                withdraw_requested_at=0,
                refund_nonce=0,
                now=NOW + 1,
            )
        )
    state = store.channel_get(CHANNEL)
    assert state is not None and state.balance == BALANCE
    # Inline writes never checkpoint; after a bounded run of them one goes the waiting way,
    # where SQLite's automatic checkpoint keeps the WAL bounded.
    inline = 0
    for n in range(1000):
        token = f"t{n}"
        try:
            store.call_nowait(_begin_at, store, token, n)
        except WouldWait:
            break
        inline += 1
        store.call_nowait(store.channel_commit, CHANNEL, token, PRICE, NOW)
        inline += 1
    assert 0 < inline <= 300
    store.close()


def _begin_at(store: SQLiteStore, token: str, n: int) -> None:
    outcome = store.channel_begin(
        CHANNEL,
        token,
        base=n * PRICE,
        max_claimable=(n + 1) * PRICE,
        signature=SIGNATURE,
        expires_at=NOW + 60,
        now=NOW,
    ).outcome
    assert outcome is ChannelBeginOutcome.STARTED


def test_another_process_writing_makes_it_refuse_without_writing(tmp_path: Path) -> None:
    store = _store(tmp_path, timeout="30")
    with closing(sqlite3.connect(store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # the file's write lock, as another process holds it
        started = time.perf_counter()
        with pytest.raises(WouldWait):
            store.call_nowait(_begin, store, "t1")
        assert time.perf_counter() - started < 1.0  # not the 30 s busy timeout
        other.execute("ROLLBACK")
    state = store.channel_get(CHANNEL)
    assert state is not None and state.step is None  # nothing was begun
    # The call then runs where it may wait, and the store's busy timeout is intact.
    assert _begin(store, "t1") is ChannelBeginOutcome.STARTED
    assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    store.close()


def test_another_thread_holding_the_connection_makes_it_refuse(tmp_path: Path) -> None:
    store = _store(tmp_path)
    inside = threading.Event()
    leave = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        inside.set()
        leave.wait(10)

    holder = threading.Thread(target=store._write, args=("hold", hold))
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(WouldWait):
            store.call_nowait(store.channel_get, CHANNEL)
        with pytest.raises(WouldWait):
            store.call_nowait(_begin, store, "t1")
    finally:
        leave.set()
        holder.join(10)
    assert store.call_nowait(_begin, store, "t1") is ChannelBeginOutcome.STARTED
    store.close()


def test_a_due_journal_prune_is_left_to_the_waiting_path(tmp_path: Path) -> None:
    from x402gate.stores.journal import JournalRow

    store = _store(tmp_path)
    assert _begin(store, "t1") is ChannelBeginOutcome.STARTED
    row = JournalRow(
        id="row-1",
        time=NOW,
        route="GET /paid",
        payer="0x" + "11" * 20,
        amount=0,
        asset="0x" + "22" * 20,
        network="eip155:31337",
        outcome="channel_charge",
        transaction="",
        latency=0.0,
        scheme="batch-settlement",
        detail="",
    )
    store._next_journal_prune = float("-inf")  # a prune is due
    with pytest.raises(WouldWait):
        store.call_nowait(lambda: store.channel_commit(CHANNEL, "t1", PRICE, NOW, journal=row))
    state = store.channel_get(CHANNEL)
    assert state is not None and state.charged == 0 and state.step is not None  # rolled back
    committed = store.channel_commit(CHANNEL, "t1", PRICE, NOW, journal=row)
    assert committed is not None and committed.charged == PRICE
    store.close()
