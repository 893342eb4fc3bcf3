"""A process forked while another thread of the parent is inside a SQLite transaction: the
child's own connections work at once (the fork waits for that transaction to end)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from x402gate.stores import open_store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork")


def _child(url: str, results: Any) -> None:
    try:
        with open_store(url) as store:
            results.put(store.lease_acquire("child-job", "child", 60, time.time()))
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def _fork_while_held(
    tmp_path: Path, hold: Callable[[Any, threading.Event, threading.Event], None]
) -> Any:
    """Fork a child that opens the store while ``hold`` (another thread) keeps the file locked
    for 0.3 s; the child's answer to a lease write."""
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    store: Any = open_store(url)
    try:
        assert store.lease_acquire("parent-job", "parent", 60, time.time())
        inside, done = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold, args=(store, inside, done))
        holder.start()
        assert inside.wait(5)
        threading.Timer(0.3, done.set).start()
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_child, args=(url, results))
        child.start()
        answer = results.get(timeout=30)
        child.join(30)
        holder.join(5)
    finally:
        store.close()
    return answer


def test_a_fork_during_another_threads_transaction_leaves_the_child_a_working_store(
    tmp_path: Path,
) -> None:
    def transaction(store: Any, inside: threading.Event, done: threading.Event) -> None:
        # Another thread of the parent holds the store (and the file's write lock) for a
        # moment, as a background claimer's write does.
        with store._lock:
            conn = store._connection()
            conn.execute("BEGIN IMMEDIATE")
            inside.set()
            done.wait(5)
            conn.execute("COMMIT")

    assert _fork_while_held(tmp_path, transaction) is True


def test_a_fork_during_a_checkpoints_first_pass_leaves_the_child_a_working_store(
    tmp_path: Path,
) -> None:
    # A checkpoint's first pass copies the WAL on a connection of its own, outside the store's
    # lock; a fork waits for it as for a transaction.
    def first_pass(store: Any, inside: threading.Event, done: threading.Event) -> None:
        with store._side_lock:
            side = sqlite3.connect(str(tmp_path / "gate.db"), isolation_level=None)
            side.execute("BEGIN IMMEDIATE")  # the file locked, as a checkpoint can
            inside.set()
            done.wait(5)
            side.execute("COMMIT")
            side.close()

    assert _fork_while_held(tmp_path, first_pass) is True
