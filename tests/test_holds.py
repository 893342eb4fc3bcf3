"""HoldKeeper: the renewals of the credit holds of running requests, on a real SQLite ledger.

What the integrations' tests (tests/integrations/test_metered_holds.py and the gateway's) show
from the outside — a hold outlives its TTL while its answer runs — is checked here step by step:
which holds are renewed and when, what a failing store does, and that an idle gate keeps no
thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from x402gate._holds import HoldKeeper
from x402gate.errors import StoreError
from x402gate.stores import open_store
from x402gate.stores.base import Store, credit_account

ACCOUNT = credit_account("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "0xabc")
TTL = 60
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def now(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield s
    s.close()


def reserve(store: Store, rid: str, clock: Clock) -> float:
    expires_at = int(clock.t) + TTL
    assert store.credit_reserve(ACCOUNT, 10, rid, expires_at, clock.t)
    return expires_at


def expiry(store: Store, rid: str, clock: Clock) -> tuple[str, float]:
    entry = store.credit_reservation(rid, clock.t)
    assert entry is not None
    return entry.state, entry.expires_at


def test_only_holds_with_less_than_half_their_ttl_left_are_renewed(store: Store) -> None:
    clock = Clock()
    keeper = HoldKeeper(store, clock, TTL, poll_seconds=3600)  # passes run by hand here
    store.credit_topup(ACCOUNT, 100, "tx", clock.t)
    first = reserve(store, "old", clock)
    keeper.add("old", first)
    clock.t += 20
    second = reserve(store, "new", clock)
    keeper.add("new", second)
    clock.t += 15  # "old": 25 s left, "new": 45 s left
    assert keeper.renew() == 1
    assert expiry(store, "old", clock) == ("held", int(clock.t) + TTL)
    assert expiry(store, "new", clock) == ("held", second)
    keeper.discard("new")
    clock.t += 50  # past "new"'s expiry, not "old"'s renewed one
    assert keeper.renew() == 1
    assert expiry(store, "new", clock)[0] == "expired"  # discarded: left to expire
    assert expiry(store, "old", clock) == ("held", int(clock.t) + TTL)
    keeper.close()


def test_a_failing_store_is_retried_and_an_expired_hold_is_dropped(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    keeper = HoldKeeper(store, clock, TTL, poll_seconds=3600)
    store.credit_topup(ACCOUNT, 100, "tx", clock.t)
    keeper.add("r1", reserve(store, "r1", clock))
    real = store.credit_extend

    def down(reservation_id: str, expires_at: float, now: float) -> bool:
        raise StoreError("SQLite store ledger.db: credit_extend failed: disk I/O error")

    store.credit_extend = down  # type: ignore[method-assign]
    clock.t += 40
    with caplog.at_level(logging.WARNING, logger="x402gate"):
        assert keeper.renew() == 0
    assert "could not renew a credit hold" in caplog.text
    assert "r1" in keeper  # tried again on the next pass
    store.credit_extend = real  # type: ignore[method-assign]
    assert keeper.renew() == 1
    assert expiry(store, "r1", clock) == ("held", int(clock.t) + TTL)
    # A process stalled past the TTL: the hold is gone, nothing to renew any more.
    clock.t += TTL + 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="x402gate"):
        assert keeper.renew() == 0
    assert "r1" not in keeper
    assert "expired while its request was still running" in caplog.text
    assert store.credit_balance(ACCOUNT, clock.t).available == 100
    keeper.close()


def test_the_thread_runs_only_while_there_are_holds(store: Store) -> None:
    clock = Clock()
    keeper = HoldKeeper(store, clock, TTL, poll_seconds=0.01)
    store.credit_topup(ACCOUNT, 100, "tx", clock.t)
    assert keeper._thread is None
    keeper.add("r1", reserve(store, "r1", clock))
    assert keeper._thread is not None and keeper._thread.is_alive()
    clock.t += 40
    deadline = time.monotonic() + 5
    while expiry(store, "r1", clock)[1] != int(clock.t) + TTL:
        assert time.monotonic() < deadline, "the thread did not renew the hold"
        time.sleep(0.005)
    thread = keeper._thread
    keeper.discard("r1")
    thread.join(5)
    assert not thread.is_alive() and keeper._thread is None
    keeper.add("r2", reserve(store, "r2", clock))  # a new hold starts a new thread
    assert keeper._thread is not None and keeper._thread.is_alive()
    keeper.close()
    assert not keeper._thread or not keeper._thread.is_alive()
    keeper.add("r3", reserve(store, "r3", clock))  # closed: no thread any more
    assert keeper._thread is None or not keeper._thread.is_alive()


def _renew_in_child(url: str, results: Any) -> None:
    store = open_store(url)
    try:
        clock = Clock()
        keeper = KEEPER[0]
        keeper._store, keeper._clock = store, clock
        keeper.add("child", reserve(store, "child", clock))
        clock.t += 40
        deadline = time.monotonic() + 5
        while expiry(store, "child", clock)[1] != int(clock.t) + TTL:
            if time.monotonic() > deadline:
                results.put("not renewed")
                return
            time.sleep(0.005)
        results.put(("renewed", "parent" in keeper))
    finally:
        store.close()


KEEPER: list[HoldKeeper] = []


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)"
)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_worker_renews_its_own_holds(store: Store, tmp_path: Path) -> None:
    # A keeper made (and running) before a fork: the child has no keeper thread and maybe a
    # lock held by it; it must start its own for its own holds, and leave the parent's alone.
    clock = Clock()
    keeper = HoldKeeper(store, clock, TTL, poll_seconds=0.01)
    store.credit_topup(ACCOUNT, 100, "tx", clock.t)
    keeper.add("parent", reserve(store, "parent", clock))
    KEEPER[:] = [keeper]
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(
        target=_renew_in_child, args=(f"sqlite:///{tmp_path / 'ledger.db'}", results)
    )
    child.start()
    try:
        assert results.get(timeout=30) == ("renewed", False)
    finally:
        child.join(30)
        keeper.close()
        KEEPER.clear()
    assert child.exitcode == 0


def test_a_running_requests_channel_step_is_renewed_until_it_is_committed(store: Store) -> None:
    """A streamed answer paid by a voucher outlives its step's lifetime: the keeper extends
    the step while it runs, so no other request takes it over; once discarded, it is not."""
    from x402gate.stores.channels import ChannelBeginOutcome

    channel = "0x" + "ab" * 32
    clock = Clock()
    keeper = HoldKeeper(store, clock, TTL, poll_seconds=3600)
    store.channel_sync(
        channel,
        '{"payer":"0x1"}',
        balance=10_000,
        total_claimed=0,
        withdraw_requested_at=0,
        refund_nonce=0,
        now=clock.t,
    )
    begun = store.channel_begin(
        channel, "t1", base=0, max_claimable=100, signature="0x" + "11" * 65,
        expires_at=clock.t + 30, now=clock.t,
    )  # fmt: skip
    assert begun.outcome is ChannelBeginOutcome.STARTED
    keeper.add_step(channel, "t1", clock.t + 30, 30.0)
    clock.t += 20  # less than half of its lifetime left
    assert keeper.renew() == 1
    clock.t += 20  # past the first expiry: still held, by the renewal
    other = store.channel_begin(
        channel, "t2", base=0, max_claimable=100, signature="0x" + "22" * 65,
        expires_at=clock.t + 30, now=clock.t,
    )  # fmt: skip
    assert other.outcome is ChannelBeginOutcome.BUSY
    keeper.discard_step(channel, "t1")
    clock.t += 60
    assert keeper.renew() == 0
    taken = store.channel_begin(
        channel, "t2", base=0, max_claimable=100, signature="0x" + "22" * 65,
        expires_at=clock.t + 30, now=clock.t,
    )  # fmt: skip
    assert taken.outcome is ChannelBeginOutcome.STARTED
    keeper.close()
