"""Leases (``lease_acquire``, ``lease_release``, ``lease_holder``) on every backend, and races for
them between processes on the shared ones: one holder at a time, handed over at expiry."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from x402gate.stores import open_store

from ._lease_race import lease_race
from .conftest import StoreFactory

NOW = 1_700_000_000.0


def test_one_holder_at_a_time_renewed_released_and_expired(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.supports_leases
    assert store.lease_holder("claims", NOW) is None
    assert store.lease_acquire("claims", "a", 10, NOW)
    assert store.lease_holder("claims", NOW) == "a"
    # Another holder is refused while the lease is live, up to its last instant.
    assert not store.lease_acquire("claims", "b", 10, NOW + 5)
    assert not store.lease_acquire("claims", "b", 10, NOW + 9.999)
    # The holder renews it: the expiry moves on from the renewal.
    assert store.lease_acquire("claims", "a", 10, NOW + 8)
    assert not store.lease_acquire("claims", "b", 10, NOW + 17)
    assert store.lease_holder("claims", NOW + 17) == "a"
    # Unrenewed, it expires at now + ttl and another takes it over.
    assert store.lease_holder("claims", NOW + 18) is None
    assert store.lease_acquire("claims", "b", 10, NOW + 18)
    assert store.lease_holder("claims", NOW + 18) == "b"
    # The old holder can neither renew nor release it now.
    assert not store.lease_acquire("claims", "a", 10, NOW + 19)
    assert not store.lease_release("claims", "a")
    assert store.lease_holder("claims", NOW + 19) == "b"
    # Released by its holder, it is free at once.
    assert store.lease_release("claims", "b")
    assert not store.lease_release("claims", "b")
    assert store.lease_holder("claims", NOW + 19) is None
    assert store.lease_acquire("claims", "c", 10, NOW + 19)
    # Names are independent.
    assert store.lease_acquire("other", "a", 10, NOW + 19)
    assert store.lease_holder("claims", NOW + 19) == "c"
    assert store.lease_holder("other", NOW + 19) == "a"


def test_bad_arguments_are_refused(make_store: StoreFactory) -> None:
    store = make_store()
    for name, holder, ttl in [
        ("", "a", 10),
        ("claims", "", 10),
        ("x" * 201, "a", 10),
        ("claims", "a\n", 10),
        ("claims", "a", 0),
        ("claims", "a", -1),
        ("claims", "a", 86_401),
        ("claims", "a", True),
    ]:
        with pytest.raises(ValueError):
            store.lease_acquire(name, holder, ttl, NOW)
    assert store.lease_holder("claims", NOW) is None


def _race(url: str, workers: int, names: list[str]) -> list[tuple[int, object, object]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=lease_race, args=(url, names, i, barrier, results))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    return outcomes


def _check_one_winner(
    url: str, outcomes: list[tuple[int, object, object]], names: list[str]
) -> None:
    errors = [o for o in outcomes if not isinstance(o[1], list)]
    assert not errors, errors
    for round_index in (1, 2):
        winners = {name: [o[0] for o in outcomes if name in o[round_index]] for name in names}  # type: ignore[operator]
        assert all(len(w) == 1 for w in winners.values()), winners
    with open_store(url) as store:
        for name in names:
            holder = store.lease_holder(name, NOW + 32)
            (winner,) = [o[0] for o in outcomes if name in o[2]]  # type: ignore[operator]
            assert holder == f"v{winner}"


def test_processes_racing_on_one_sqlite_file_get_one_holder_per_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/leases.db"
    names = [f"lease-{i}" for i in range(20)]
    with open_store(url) as store:
        store.ping()  # the tables exist before the race
    _check_one_winner(url, _race(url, 4, names), names)


@pytest.mark.redis
def test_processes_racing_on_one_redis_server_get_one_holder_per_lease(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=leaserace:"
    names = [f"lease-{i}" for i in range(20)]
    _check_one_winner(url, _race(url, 4, names), names)


@pytest.mark.postgres
def test_processes_racing_on_one_postgres_database_get_one_holder_per_lease(
    postgres_url: str,
) -> None:
    names = [f"lease-{i}" for i in range(20)]
    with open_store(postgres_url) as store:
        store.ping()
    _check_one_winner(postgres_url, _race(postgres_url, 4, names), names)
