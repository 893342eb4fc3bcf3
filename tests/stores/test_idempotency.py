"""The payment-identifier rules of stores/base.py, checked on every backend, races included."""

from __future__ import annotations

import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from x402gate.errors import ConfigurationError
from x402gate.stores import (
    MAX_IDEMPOTENT_RESPONSE_BYTES,
    ClaimResult,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_payment_id,
    open_store,
)
from x402gate.stores.memory import MemoryStore
from x402gate.stores.postgres import PostgresStore
from x402gate.stores.sqlite import SQLiteStore

NEW = IdempotencyResult(IdempotencyOutcome.NEW)
IN_PROGRESS = IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)
CONFLICT = IdempotencyResult(IdempotencyOutcome.CONFLICT)

# A fractional clock, so that expiry boundaries are checked to the last bit of a double.
NOW = 1_700_000_000.123456
TTL = 600
ID = "pay_0123456789abcdef0123456789abcdef"
OTHER_ID = "pay_fedcba9876543210fedcba9876543210"
FP = "a" * 64
FP2 = "b" * 64
BODY = b'HTTP/1.1 200\r\n\r\n{"ok": true}\x00\xff\xfe'  # not UTF-8: stored as opaque bytes


def replay(response: bytes) -> IdempotencyResult:
    return IdempotencyResult(IdempotencyOutcome.REPLAY, response)


# -- the life of an id -------------------------------------------------------------------------


def test_first_begin_reserves_and_a_retry_waits(store: Store) -> None:
    assert store.supports_idempotency
    assert store.idempotency_state(ID, NOW) is None
    assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW
    assert store.idempotency_state(ID, NOW) == "pending"
    assert store.idempotency_begin(ID, FP, TTL, NOW + 1) == IN_PROGRESS
    assert store.idempotency_state(ID, NOW + 1) == "pending"


def test_completed_id_replays_the_exact_response(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    assert store.idempotency_complete(ID, FP, BODY, NOW + 1) is True
    assert store.idempotency_state(ID, NOW + 1) == "done"
    result = store.idempotency_begin(ID, FP, TTL, NOW + 2)
    assert result == replay(BODY)
    assert type(result.response) is bytes
    # Replaying changes nothing.
    assert store.idempotency_begin(ID, FP, TTL, NOW + 3) == replay(BODY)


def test_empty_response_is_a_response(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    assert store.idempotency_complete(ID, FP, b"", NOW)
    assert store.idempotency_begin(ID, FP, TTL, NOW) == replay(b"")


def test_other_fingerprint_conflicts_whether_pending_or_done(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    assert store.idempotency_begin(ID, FP2, TTL, NOW) == CONFLICT
    # The loser took nothing: it can neither complete nor abandon the reservation.
    assert store.idempotency_complete(ID, FP2, b"forged", NOW) is False
    assert store.idempotency_abandon(ID, FP2) is False
    assert store.idempotency_state(ID, NOW) == "pending"
    assert store.idempotency_complete(ID, FP, BODY, NOW) is True
    assert store.idempotency_begin(ID, FP2, TTL, NOW) == CONFLICT
    assert store.idempotency_begin(ID, FP, TTL, NOW) == replay(BODY)


def test_complete_can_be_repeated_and_keeps_the_first_response(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    assert store.idempotency_complete(ID, FP, BODY, NOW) is True
    assert store.idempotency_complete(ID, FP, b"second", NOW + 1) is True
    assert store.idempotency_begin(ID, FP, TTL, NOW + 2) == replay(BODY)


def test_complete_needs_a_reservation(store: Store) -> None:
    assert store.idempotency_complete(ID, FP, BODY, NOW) is False
    assert store.idempotency_state(ID, NOW) is None
    assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW


def test_abandon_frees_a_pending_id_for_a_retry(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    assert store.idempotency_abandon(ID, FP) is True
    assert store.idempotency_state(ID, NOW) is None
    assert store.idempotency_abandon(ID, FP) is False
    assert store.idempotency_complete(ID, FP, BODY, NOW) is False
    # Free for anyone, even another payload: the first one left no answer behind.
    assert store.idempotency_begin(ID, FP2, TTL, NOW) == NEW


def test_abandon_leaves_a_done_id_alone(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    store.idempotency_complete(ID, FP, BODY, NOW)
    assert store.idempotency_abandon(ID, FP) is False
    assert store.idempotency_begin(ID, FP, TTL, NOW) == replay(BODY)


def test_ids_are_independent(store: Store) -> None:
    assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW
    assert store.idempotency_begin(OTHER_ID, FP2, TTL, NOW) == NEW
    store.idempotency_complete(ID, FP, BODY, NOW)
    assert store.idempotency_state(OTHER_ID, NOW) == "pending"
    assert store.idempotency_begin(OTHER_ID, FP2, TTL, NOW) == IN_PROGRESS


def test_ids_and_replay_keys_live_apart(store: Store) -> None:
    # The same string as a claim key and as a payment id: two different things.
    assert store.claim(ID, "GET /a", "t1", int(NOW) + TTL, NOW) is ClaimResult.CLAIMED
    assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW
    assert store.mark_used(ID, "t1") is True
    assert store.idempotency_state(ID, NOW) == "pending"
    assert store.idempotency_abandon(ID, FP) is True
    assert store.state(ID, NOW) == "used"


# -- expiry ------------------------------------------------------------------------------------


def test_pending_id_expires_at_its_ttl(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    end = NOW + TTL
    before = end - 1e-6  # a few ulps before the boundary at this magnitude
    assert before < end
    assert store.idempotency_state(ID, before) == "pending"
    assert store.idempotency_begin(ID, FP2, TTL, before) == CONFLICT
    assert store.idempotency_state(ID, end) is None
    assert store.idempotency_complete(ID, FP, BODY, end) is False
    # Expired is absent, for any fingerprint.
    assert store.idempotency_begin(ID, FP2, TTL, end) == NEW
    assert store.idempotency_state(ID, end) == "pending"


def test_done_id_is_kept_for_the_ttl_from_completion(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    done_at = NOW + 100.5
    assert store.idempotency_complete(ID, FP, BODY, done_at) is True
    assert store.idempotency_begin(ID, FP, TTL, NOW + TTL) == replay(BODY)
    end = done_at + TTL
    assert store.idempotency_begin(ID, FP, TTL, end - 1e-6) == replay(BODY)
    assert store.idempotency_state(ID, end) is None
    assert store.idempotency_begin(ID, FP, TTL, end) == NEW
    # The old response is gone with the old entry.
    assert store.idempotency_complete(ID, FP, b"new", end) is True
    assert store.idempotency_begin(ID, FP, TTL, end) == replay(b"new")


def test_repeated_complete_does_not_extend_the_entry(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    store.idempotency_complete(ID, FP, BODY, NOW)
    assert store.idempotency_complete(ID, FP, BODY, NOW + TTL - 1) is True
    assert store.idempotency_state(ID, NOW + TTL) is None


def test_expired_entries_are_forgotten_among_many(store: Store) -> None:
    ids = [f"pay_{i:032d}" for i in range(50)]
    for i, payment_id in enumerate(ids):
        assert store.idempotency_begin(payment_id, FP, 10 + i, NOW) == NEW
    later = NOW + 35  # ids 0..25 expired (expires_at <= later), 26..49 live
    for i, payment_id in enumerate(ids):
        expected = NEW if 10 + i <= 35 else IN_PROGRESS
        assert store.idempotency_begin(payment_id, FP, 10, later) == expected, i


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payment_id",
    [
        "a" * 15,
        "a" * 129,
        "pay_0123456789abcdef!",
        "pay_0123456789abcdé",
        "pay 0123456789abcdef",
        "",
    ],
)
def test_malformed_ids_are_refused(store: Store, payment_id: str) -> None:
    with pytest.raises(ValueError, match="payment identifier"):
        store.idempotency_begin(payment_id, FP, TTL, NOW)
    with pytest.raises(ValueError, match="payment identifier"):
        store.idempotency_complete(payment_id, FP, BODY, NOW)
    with pytest.raises(ValueError, match="payment identifier"):
        store.idempotency_abandon(payment_id, FP)


@pytest.mark.parametrize("payment_id", ["a" * 16, "Z" * 128, "pay_0-9_A-Z_a-z_xx"])
def test_ids_at_the_limits_are_accepted(store: Store, payment_id: str) -> None:
    assert check_payment_id(payment_id) == payment_id
    assert store.idempotency_begin(payment_id, FP, TTL, NOW) == NEW
    assert store.idempotency_complete(payment_id, FP, BODY, NOW) is True


@pytest.mark.parametrize("fingerprint", ["", "f" * 513])
def test_malformed_fingerprints_are_refused(store: Store, fingerprint: str) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        store.idempotency_begin(ID, fingerprint, TTL, NOW)


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5])
def test_ttl_must_be_positive_whole_seconds(store: Store, ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match="TTL"):
        store.idempotency_begin(ID, FP, ttl, NOW)
    assert store.idempotency_state(ID, NOW) is None


def test_response_size_is_capped(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    with pytest.raises(ConfigurationError, match="exceeds"):
        store.idempotency_complete(ID, FP, b"x" * (MAX_IDEMPOTENT_RESPONSE_BYTES + 1), NOW)
    assert store.idempotency_state(ID, NOW) == "pending"  # nothing changed
    largest = bytes(range(256)) * (MAX_IDEMPOTENT_RESPONSE_BYTES // 256)
    assert len(largest) == MAX_IDEMPOTENT_RESPONSE_BYTES
    assert store.idempotency_complete(ID, FP, largest, NOW) is True
    assert store.idempotency_begin(ID, FP, TTL, NOW) == replay(largest)


def test_response_must_be_bytes(store: Store) -> None:
    store.idempotency_begin(ID, FP, TTL, NOW)
    with pytest.raises(TypeError):
        store.idempotency_complete(ID, FP, "text", NOW)  # type: ignore[arg-type]
    assert store.idempotency_state(ID, NOW) == "pending"


def test_a_backend_without_idempotency_says_so() -> None:
    class ClaimsOnly(MemoryStore):
        supports_idempotency: ClassVar[bool] = False

    # The base class defaults, reached by skipping MemoryStore's implementations.
    base_store = ClaimsOnly()
    assert not ClaimsOnly.supports_idempotency and not Store.supports_idempotency
    with pytest.raises(ConfigurationError, match="does not support payment-identifier"):
        Store.idempotency_begin(base_store, ID, FP, TTL, NOW)
    with pytest.raises(ConfigurationError, match="does not support payment-identifier"):
        Store.idempotency_complete(base_store, ID, FP, BODY, NOW)
    with pytest.raises(ConfigurationError, match="does not support payment-identifier"):
        Store.idempotency_abandon(base_store, ID, FP)
    with pytest.raises(ConfigurationError, match="does not support payment-identifier"):
        Store.idempotency_state(base_store, ID, NOW)


# -- races -------------------------------------------------------------------------------------


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def twin(store: Store) -> Store:
    """Another store over the same data: the same object in memory, another connection else."""
    if isinstance(store, MemoryStore):
        return store
    if isinstance(store, SQLiteStore):
        return SQLiteStore(store.path, synchronous="normal")
    if isinstance(store, PostgresStore):
        return PostgresStore(store.conninfo, schema=store.schema)
    import redis

    from x402gate.stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    if store.cluster:
        node = store.client.get_default_node()
        cluster = redis.cluster.RedisCluster(host=node.host, port=node.port)
        return RedisStore(client=cluster, key_prefix=store.key_prefix)
    pool = store.client.connection_pool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        primary = pool.sentinel_manager.master_for(pool.service_name)
        return RedisStore(client=primary, key_prefix=store.key_prefix)
    client = redis.Redis(connection_pool=redis.ConnectionPool(**pool.connection_kwargs))
    return RedisStore(client=client, key_prefix=store.key_prefix)


RACE_IDS = [f"pay_race_{i:024d}" for i in range(20)]


def begin_race(
    make_store: Callable[[], Store], n: int, fingerprint_of: Callable[[int], str]
) -> tuple[Store, list[dict[str, IdempotencyOutcome]]]:
    """``n`` threads, each with its own store over the same data, begin every id at once."""
    store = make_store()
    stores = [twin(store) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: queue.Queue[tuple[int, dict[str, IdempotencyOutcome] | str]] = queue.Queue()

    def work(worker: int) -> None:
        try:
            barrier.wait(60)
            outcomes = {
                payment_id: stores[worker]
                .idempotency_begin(payment_id, fingerprint_of(worker), TTL, NOW)
                .outcome
                for payment_id in RACE_IDS
            }
            results.put((worker, outcomes))
        except BaseException as exc:
            barrier.abort()
            results.put((worker, f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        collected = [results.get_nowait() for _ in range(n)]
    finally:
        for other in stores:
            if other is not store:
                other.close()
                if hasattr(other, "client"):
                    other.client.close()
    errors = [outcome for _, outcome in collected if isinstance(outcome, str)]
    assert not errors, errors
    by_worker = dict(collected)
    return store, [by_worker[i] for i in range(n)]  # type: ignore[misc]


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_same_fingerprint_exactly_one_new(make_store: Callable[[], Store]) -> None:
    n = 8
    store, outcomes = begin_race(make_store, n, lambda worker: FP)
    for payment_id in RACE_IDS:
        got = sorted(o[payment_id].value for o in outcomes)
        assert got == ["in_progress"] * (n - 1) + ["new"], (payment_id, got)
        assert store.idempotency_state(payment_id, NOW) == "pending"


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_different_fingerprints_one_new_rest_conflict(
    make_store: Callable[[], Store],
) -> None:
    n = 8
    store, outcomes = begin_race(make_store, n, lambda worker: f"fp-{worker}")
    for payment_id in RACE_IDS:
        got = sorted(o[payment_id].value for o in outcomes)
        assert got == ["conflict"] * (n - 1) + ["new"], (payment_id, got)
        # The store is bound to the winner's fingerprint, not to a loser that overwrote it.
        (winner,) = [w for w, o in enumerate(outcomes) if o[payment_id] is IdempotencyOutcome.NEW]
        for worker in range(n):
            assert store.idempotency_abandon(payment_id, f"fp-{worker}") is (worker == winner)


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_after_abandon_exactly_one_new_again(make_store: Callable[[], Store]) -> None:
    # The update path: the id exists (expired or abandoned) when the race starts.
    n = 8
    store = make_store()
    for payment_id in RACE_IDS:
        store.idempotency_begin(payment_id, "old", TTL, NOW - TTL)  # expired at NOW
    _, outcomes = begin_race(lambda: store, n, lambda worker: f"fp-{worker % 2}")
    for payment_id in RACE_IDS:
        got = sorted(o[payment_id].value for o in outcomes)
        assert got.count("new") == 1, (payment_id, got)
        assert set(got) <= {"new", "in_progress", "conflict"}
        (winner,) = [w for w, o in enumerate(outcomes) if o[payment_id] is IdempotencyOutcome.NEW]
        for worker, o in enumerate(outcomes):
            same = worker % 2 == winner % 2
            if worker != winner:
                assert o[payment_id].value == ("in_progress" if same else "conflict")


# -- backend specifics -------------------------------------------------------------------------


def test_sqlite_table_is_added_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # A file written before idempotency existed: the replay table and schema version 1 only.
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE x402gate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        "INSERT INTO x402gate_meta VALUES ('schema_version', '1');"
        "CREATE TABLE x402gate_replay (key TEXT PRIMARY KEY, resource TEXT NOT NULL,"
        " token TEXT NOT NULL, state TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;"
        "INSERT INTO x402gate_replay VALUES ('k', 'GET /a', 't', 'used', 1e12);"
    )
    conn.close()
    with open_store(f"sqlite:///{path}") as store:
        assert store.state("k", NOW) == "used"
        assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW
        store.idempotency_complete(ID, FP, BODY, NOW)
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT id, fingerprint, state, response FROM x402gate_idempotency")
        assert rows.fetchall() == [(ID, FP, "done", BODY)]
        version = conn.execute("SELECT value FROM x402gate_meta").fetchall()
        assert version == [("1",)]
    finally:
        conn.close()


@pytest.mark.redis
def test_redis_keys_and_their_ttl(redis_url: str) -> None:
    import redis

    from x402gate.stores.redis import EXPIRY_GRACE_SECONDS, RedisStore

    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client=client, key_prefix="idemkeys:")
    try:
        client.delete(f"idemkeys:idem:{ID}")
        store.idempotency_begin(ID, FP, TTL, NOW)
        assert client.exists(f"idemkeys:idem:{ID}") == 1
        assert client.exists(f"idemkeys:replay:{ID}") == 0
        pttl = client.pttl(f"idemkeys:idem:{ID}")
        assert (TTL + EXPIRY_GRACE_SECONDS - 5) * 1000 < pttl <= (TTL + EXPIRY_GRACE_SECONDS) * 1000
        assert float(client.hget(f"idemkeys:idem:{ID}", "expires_at")) == NOW + TTL  # type: ignore[arg-type]
        # Completion renews it for the TTL from then; the Redis TTL counts from the caller's now.
        store.idempotency_complete(ID, FP, BODY, NOW + 300.25)
        expires_at = client.hget(f"idemkeys:idem:{ID}", "expires_at")
        assert float(expires_at) == NOW + 300.25 + TTL  # type: ignore[arg-type]
        pttl = client.pttl(f"idemkeys:idem:{ID}")
        assert (TTL + EXPIRY_GRACE_SECONDS - 5) * 1000 < pttl <= (TTL + EXPIRY_GRACE_SECONDS) * 1000
        assert store.idempotency_abandon(ID, FP) is False
        client.delete(f"idemkeys:idem:{ID}")
    finally:
        client.close()


@pytest.mark.redis
def test_redis_client_decoding_responses_still_replays_bytes(redis_url: str) -> None:
    import redis

    from x402gate.stores.redis import RedisStore

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisStore(client=client, key_prefix="idemdecode:")
    try:
        client.delete(f"idemdecode:idem:{ID}")
        assert store.idempotency_begin(ID, FP, TTL, NOW) == NEW
        assert store.idempotency_begin(ID, FP, TTL, NOW) == IN_PROGRESS
        assert store.idempotency_complete(ID, FP, BODY, NOW) is True
        assert store.idempotency_begin(ID, FP, TTL, NOW) == replay(BODY)
        assert store.idempotency_state(ID, NOW) == "done"
        client.delete(f"idemdecode:idem:{ID}")
    finally:
        client.close()
