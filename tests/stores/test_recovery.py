"""Recovering a held claim whose request is gone (base.py: recovery_check, take_over), on every
backend: the chain look-ups it rations, and the one retry that may take the claim over."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from x402gate.stores import ClaimResult, Store

from .conftest import StoreFactory

KEY = "eip155:31337|0xasset|0xpayer|0x01"
RESOURCE = "GET /paid"
NOW = 1_700_000_000.0
EXP = 1_700_000_600


def test_flag_says_every_builtin_backend_recovers(store: Store) -> None:
    assert store.supports_recovery


def test_a_held_claim_is_checked_at_most_once_per_interval(store: Store) -> None:
    assert store.claim(KEY, RESOURCE, "lost", EXP, NOW) is ClaimResult.CLAIMED
    assert store.recovery_check(KEY, RESOURCE, NOW, 2.0) == "lost"
    # Retries inside the interval do not get to read the chain again.
    assert store.recovery_check(KEY, RESOURCE, NOW + 1.0, 2.0) is None
    assert store.recovery_check(KEY, RESOURCE, NOW + 1.999, 2.0) is None
    assert store.recovery_check(KEY, RESOURCE, NOW + 2.0, 2.0) == "lost"
    assert store.recovery_check(KEY, RESOURCE, NOW + 2.5, 2.0) is None


def test_only_a_live_held_claim_for_this_resource_is_checked(store: Store) -> None:
    assert store.recovery_check(KEY, RESOURCE, NOW, 2.0) is None  # unknown
    store.claim(KEY, RESOURCE, "a", EXP, NOW)
    assert store.recovery_check(KEY, "GET /other", NOW, 2.0) is None  # bound elsewhere
    assert store.release(KEY, "a")
    assert store.recovery_check(KEY, RESOURCE, NOW, 2.0) is None  # released: claim it instead
    store.claim(KEY, RESOURCE, "b", EXP, NOW)
    assert store.mark_used(KEY, "b")
    assert store.recovery_check(KEY, RESOURCE, NOW, 2.0) is None  # answered already
    other = KEY.replace("0x01", "0x02")
    store.claim(other, RESOURCE, "c", EXP, NOW)
    assert store.recovery_check(other, RESOURCE, EXP, 2.0) is None  # expired


def test_take_over_is_a_compare_and_set_on_the_holder(store: Store) -> None:
    store.claim(KEY, RESOURCE, "lost", EXP, NOW)
    assert not store.take_over(KEY, "someone-else", "retry")
    assert store.take_over(KEY, "lost", "retry")
    assert store.take_over(KEY, "lost", "retry")  # repeated by its own request: same answer
    assert not store.take_over(KEY, "lost", "second-retry")  # the holder changed
    # The lost request cannot answer or release any more; the retry can.
    assert not store.mark_used(KEY, "lost")
    assert not store.release(KEY, "lost")
    assert store.state(KEY, NOW) == "held"
    assert store.claim(KEY, RESOURCE, "third", EXP, NOW) is ClaimResult.IN_FLIGHT
    assert store.mark_used(KEY, "retry")
    assert store.claim(KEY, RESOURCE, "third", EXP, NOW) is ClaimResult.USED
    assert not store.take_over(KEY, "retry", "third")  # used: nothing to take over


def test_a_new_claim_forgets_the_last_check_of_an_expired_one(store: Store) -> None:
    store.claim(KEY, RESOURCE, "a", int(NOW) + 10, NOW)
    assert store.recovery_check(KEY, RESOURCE, NOW + 9, 60.0) == "a"
    # Expired, then claimed anew: a new authorization life, nothing carries over.
    assert store.claim(KEY, RESOURCE, "b", int(NOW) + 100, NOW + 10) is ClaimResult.CLAIMED
    assert store.recovery_check(KEY, RESOURCE, NOW + 11, 60.0) == "b"


def test_of_concurrent_retries_exactly_one_takes_the_claim_over(
    make_handle: StoreFactory,
) -> None:
    first = make_handle()
    first.claim(KEY, RESOURCE, "lost", EXP, NOW)
    workers = 12
    handles = [make_handle() for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def retry(n: int) -> tuple[str | None, bool]:
        barrier.wait(30)
        seen = handles[n].recovery_check(KEY, RESOURCE, NOW, 5.0)
        barrier.wait(30)
        # Even retries that read the same holder race on the take-over itself.
        return seen, handles[n].take_over(KEY, "lost", f"retry-{n}")

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(retry, range(workers)))
    checks = [seen for seen, _ in results if seen is not None]
    winners = [n for n, (_, won) in enumerate(results) if won]
    assert checks == ["lost"]  # one chain look-up for twelve retries
    assert len(winners) == 1
    assert first.mark_used(KEY, f"retry-{winners[0]}")
    assert not first.mark_used(KEY, "lost")


def test_a_sqlite_file_written_before_recovery_existed_gains_it(tmp_path: Path) -> None:
    import sqlite3

    from x402gate.stores import open_store

    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    assert store.claim(KEY, RESOURCE, "lost", EXP, NOW) is ClaimResult.CLAIMED
    store.close()
    with sqlite3.connect(path) as conn:  # as an x402gate of before recovery left it
        conn.execute("DROP TABLE x402gate_recovery")
    reopened = open_store(f"sqlite:///{path}")
    try:
        assert reopened.recovery_check(KEY, RESOURCE, NOW, 2.0) == "lost"
        assert reopened.take_over(KEY, "lost", "retry")
        assert reopened.mark_used(KEY, "retry")
    finally:
        reopened.close()


def test_a_claim_whose_answer_is_on_the_way_is_recovered_only_once_stale(store: Store) -> None:
    assert store.claim(KEY, RESOURCE, "lost", EXP, NOW) is ClaimResult.CLAIMED
    assert store.mark_used(KEY, "lost", NOW)  # settled, answer on the way
    assert store.state(KEY, NOW) == "sending"
    # Every other request sees a used authorization.
    assert store.claim(KEY, RESOURCE, "retry", EXP, NOW) is ClaimResult.USED
    assert not store.release(KEY, "lost")
    # Without a grace, or while the request renews its sign of life, nobody takes it over.
    assert store.recovery_check(KEY, RESOURCE, NOW + 100, 2.0) is None
    assert store.mark_used(KEY, "lost", NOW + 5)  # renewed
    assert store.mark_used(KEY, "lost", NOW + 1)  # never moves back
    assert store.recovery_check(KEY, RESOURCE, NOW + 9.9, 2.0, 5.0) is None
    assert store.recovery_check(KEY, RESOURCE, NOW + 10, 2.0, 5.0) == "lost"
    assert not store.take_over(KEY, "someone-else", "retry")
    assert store.take_over(KEY, "lost", "retry")
    assert store.state(KEY, NOW + 10) == "held"
    # The lost request can neither renew nor finish its answer any more.
    assert not store.mark_used(KEY, "lost", NOW + 11)
    assert not store.mark_used(KEY, "lost")
    assert store.mark_used(KEY, "retry", NOW + 11)
    assert store.mark_used(KEY, "retry")  # answered
    assert store.state(KEY, NOW + 11) == "used"
    assert store.mark_used(KEY, "retry", NOW + 12)  # a late renewal changes nothing
    assert store.state(KEY, NOW + 12) == "used"
    assert store.recovery_check(KEY, RESOURCE, NOW + 1000, 2.0, 5.0) is None
    assert not store.take_over(KEY, "retry", "third")


def test_an_answered_claim_is_never_recovered(store: Store) -> None:
    store.claim(KEY, RESOURCE, "a", EXP, NOW)
    assert store.mark_used(KEY, "a", NOW)
    assert store.mark_used(KEY, "a")
    assert store.state(KEY, NOW) == "used"
    assert store.recovery_check(KEY, RESOURCE, NOW + 500, 2.0, 1.0) is None
    assert not store.take_over(KEY, "a", "retry")
    assert store.claim(KEY, RESOURCE, "retry", EXP, NOW + 500) is ClaimResult.USED


def test_of_concurrent_retries_one_takes_a_stale_sending_claim_over(
    make_handle: StoreFactory,
) -> None:
    first = make_handle()
    first.claim(KEY, RESOURCE, "lost", EXP, NOW)
    assert first.mark_used(KEY, "lost", NOW)
    workers = 8
    handles = [make_handle() for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def retry(n: int) -> tuple[str | None, bool]:
        barrier.wait(30)
        seen = handles[n].recovery_check(KEY, RESOURCE, NOW + 60, 5.0, 30.0)
        barrier.wait(30)
        return seen, handles[n].take_over(KEY, "lost", f"retry-{n}")

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(retry, range(workers)))
    assert [seen for seen, _ in results if seen is not None] == ["lost"]
    winners = [n for n, (_, won) in enumerate(results) if won]
    assert len(winners) == 1
    assert not first.mark_used(KEY, "lost")
    assert first.mark_used(KEY, f"retry-{winners[0]}")
