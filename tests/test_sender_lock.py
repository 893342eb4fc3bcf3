"""The cross-process lock of a settlement account's broadcasts (x402gate._sender_lock)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from x402gate._sender_lock import SenderLock

URL = "http://127.0.0.1:8545"
ADDRESS = "0x00000000000000000000000000000000000000aa"


def test_a_sender_learns_that_another_one_broadcast_since_its_last_turn(tmp_path: Path) -> None:
    first = SenderLock(URL, ADDRESS, directory=str(tmp_path))
    second = SenderLock(URL, ADDRESS.upper().replace("0X", "0x"), directory=str(tmp_path))
    assert first.path == second.path  # one file per endpoint and account, whatever the case
    with first.held() as others_sent:
        assert not others_sent  # nobody sent yet
        first.sent()
    with first.held() as others_sent:
        assert not others_sent  # only itself since
    with second.held() as others_sent:
        assert others_sent  # it must read the node's count
        second.sent()
    with second.held() as others_sent:
        assert not others_sent
    with first.held() as others_sent:
        assert others_sent
    other_node = SenderLock("http://127.0.0.1:9545", ADDRESS, directory=str(tmp_path))
    assert other_node.path != first.path
    for lock in (first, second, other_node):
        lock.close()


def _try_lock_in_child(lock: SenderLock, answer: multiprocessing.Queue[str]) -> None:
    assert lock._fd is not None
    try:
        fcntl.flock(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        answer.put("excluded")
    else:
        answer.put("taken")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_is_excluded_while_its_parent_holds_the_lock(tmp_path: Path) -> None:
    lock = SenderLock(URL, ADDRESS, directory=str(tmp_path))
    context = multiprocessing.get_context("fork")
    answer: multiprocessing.Queue[str] = context.Queue()
    with lock.held():
        child = context.Process(target=_try_lock_in_child, args=(lock, answer))
        child.start()
        child.join(30)
    assert answer.get(timeout=5) == "excluded"
    # Once released, the child's own descriptor takes it.
    child = context.Process(target=_try_lock_in_child, args=(lock, answer))
    child.start()
    child.join(30)
    assert answer.get(timeout=5) == "taken"
    lock.close()


def test_an_unopenable_lock_file_leaves_the_sender_on_its_own(tmp_path: Path) -> None:
    lock = SenderLock(URL, ADDRESS, directory=str(tmp_path / "missing"))
    with lock.held() as others_sent:
        assert not others_sent
        lock.sent()
    lock.close()


def test_a_stamp_left_by_a_process_gone_long_ago_does_not_make_the_account_shared(
    tmp_path: Path,
) -> None:
    lock = SenderLock(URL, ADDRESS, directory=str(tmp_path))
    lock.path.write_bytes(f"{7:016x}{int(time.time()) - 3600:010x}abcdef".encode())
    with lock.held() as others_sent:
        assert others_sent  # the node's count is read again all the same
    assert not lock.shared  # but no second simulation before each broadcast
    assert lock.sends() == 7
    with lock.held():
        lock.sent()
    assert lock.sends() == 8
    other = SenderLock(URL, ADDRESS, directory=str(tmp_path))
    with other.held() as others_sent:
        assert others_sent
    assert other.shared  # a stamp of a moment ago: another process sends now
    other.close()
    lock.close()
