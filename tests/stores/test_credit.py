"""The credit ledger of stores/base.py on every backend: rules, journal, limits and races."""

from __future__ import annotations

import multiprocessing
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import pytest

from x402gate.errors import ConfigurationError, StoreError
from x402gate.stores import (
    CREDIT_RECORD_RETENTION_SECONDS,
    MAX_CREDIT_AMOUNT,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    Store,
    credit_account,
    open_store,
)

from ._credit import ACCOUNT, NOW, conserved, reserve_race
from .conftest import StoreFactory

OTHER = credit_account("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "0xOTHER")
EXP = NOW + 60


def balance(store: Store, account: str = ACCOUNT, now: float = NOW) -> tuple[int, int]:
    b = store.credit_balance(account, now)
    return b.available, b.reserved


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


# -- accounts -----------------------------------------------------------------------------------


def test_account_names_are_canonical() -> None:
    checksummed = credit_account(
        "eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "0xAb"
    )
    lower = credit_account("EIP155:8453", "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913", "0xab")
    assert checksummed == lower == "eip155:8453|0x833589fcd6edb6e08f4c7c32d4f71b54bda02913|0xab"
    # Base58 (case-sensitive) addresses are kept as they are.
    assert credit_account("solana:x", "EPjFWdd5", "9xQeWv") == "solana:x|EPjFWdd5|9xQeWv"


@pytest.mark.parametrize(
    ("network", "asset", "payer"),
    [
        ("", "0xa", "0xb"),
        ("eip155:1", "0xa|0xb", "0xc"),
        ("eip155:1", "0xa", "0x b"),
        (1, "a", "b"),
    ],
)
def test_account_parts_that_could_collide_are_refused(network: Any, asset: str, payer: str) -> None:
    with pytest.raises(ValueError):
        credit_account(network, asset, payer)


def test_an_unknown_account_is_empty_and_cannot_reserve(store: Store) -> None:
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(0, 0, 0, 0)
    assert store.credit_reserve(ACCOUNT, 1, "r1", EXP, NOW) is False
    assert store.credit_reservation("r1", NOW) is None


# -- top-up -------------------------------------------------------------------------------------


def test_topup_is_applied_once_per_ref(store: Store) -> None:
    assert store.credit_topup(ACCOUNT, 1000, "0xtx1", NOW) == 1000
    # A retried settlement: nothing credited, the balance answered.
    assert store.credit_topup(ACCOUNT, 1000, "0xtx1", NOW + 1) == 1000
    assert store.credit_topup(ACCOUNT, 500, "0xtx2", NOW) == 1500
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(1500, 0, 1500, 0)
    store.credit_reserve(ACCOUNT, 400, "r1", EXP, NOW)
    assert store.credit_topup(ACCOUNT, 1000, "0xtx1", NOW) == 1100  # available, after the hold


@pytest.mark.parametrize(("account", "amount"), [(OTHER, 1000), (ACCOUNT, 999)])
def test_a_ref_reused_for_another_account_or_amount_is_refused(
    store: Store, account: str, amount: int
) -> None:
    store.credit_topup(ACCOUNT, 1000, "0xtx1", NOW)
    with pytest.raises(ValueError, match="already applied"):
        store.credit_topup(account, amount, "0xtx1", NOW)
    assert balance(store) == (1000, 0)
    assert balance(store, OTHER) == (0, 0)


def test_accounts_are_independent(store: Store) -> None:
    store.credit_topup(ACCOUNT, 10, "tx1", NOW)
    store.credit_topup(OTHER, 20, "tx2", NOW)
    assert store.credit_reserve(ACCOUNT, 15, "r1", EXP, NOW) is False
    assert store.credit_reserve(OTHER, 15, "r1", EXP, NOW) is True
    assert store.credit_reserve(ACCOUNT, 10, "r1", EXP, NOW) is False  # the id is taken
    assert balance(store) == (10, 0)
    assert balance(store, OTHER) == (5, 15)


# -- reserve, commit, release -------------------------------------------------------------------


def test_reserve_takes_from_available_only_when_it_covers_the_amount(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    assert store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW) is True
    assert balance(store) == (40, 60)
    assert store.credit_reserve(ACCOUNT, 41, "r2", EXP, NOW) is False
    assert balance(store) == (40, 60)
    assert store.credit_reservation("r2", NOW) is None
    assert store.credit_reserve(ACCOUNT, 40, "r3", EXP, NOW) is True  # exactly what is left
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(0, 100, 100, 0)


def test_reserve_is_idempotent_per_id(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    assert store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW) is True
    # A re-sent command gets its answer again without reserving twice.
    assert store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW + 1) is True
    assert balance(store) == (40, 60)
    # The same id with another amount or account is not that reservation.
    assert store.credit_reserve(ACCOUNT, 10, "r1", EXP, NOW) is False
    store.credit_topup(OTHER, 100, "tx2", NOW)
    assert store.credit_reserve(OTHER, 60, "r1", EXP, NOW) is False
    assert balance(store) == (40, 60)
    # A finished id is never reserved again.
    store.credit_release("r1", NOW)
    assert store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW) is False
    assert balance(store) == (100, 0)


def test_commit_charges_at_most_the_reservation_and_returns_the_rest(store: Store) -> None:
    store.credit_topup(ACCOUNT, 1000, "tx", NOW)
    store.credit_reserve(ACCOUNT, 300, "r1", EXP, NOW)
    store.credit_reserve(ACCOUNT, 300, "r2", EXP, NOW)
    assert store.credit_commit("r1", 120, NOW) == 120
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(580, 300, 1000, 120)
    assert store.credit_commit("r2", 10**9, NOW) == 300  # never above the reservation
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(580, 0, 1000, 420)


def test_commit_is_idempotent_and_needs_a_held_reservation(store: Store) -> None:
    store.credit_topup(ACCOUNT, 1000, "tx", NOW)
    store.credit_reserve(ACCOUNT, 300, "r1", EXP, NOW)
    assert store.credit_commit("r1", 120, NOW) == 120
    # Repeated (a lost answer re-sent): the first charge again, nothing more taken.
    assert store.credit_commit("r1", 200, NOW + 1) == 120
    assert store.credit_release("r1", NOW) is False  # committed: nothing left to release
    assert store.credit_commit("unknown", 5, NOW) == 0
    store.credit_reserve(ACCOUNT, 300, "r2", EXP, NOW)
    store.credit_release("r2", NOW)
    assert store.credit_commit("r2", 5, NOW) == 0  # released: charged nothing
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(880, 0, 1000, 120)


def test_a_zero_charge_commits_and_returns_everything(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 100, "r1", EXP, NOW)
    assert store.credit_commit("r1", 0, NOW) == 0
    assert store.credit_reservation("r1", NOW) == CreditReservation(
        ACCOUNT, 100, "committed", 0, EXP
    )
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(100, 0, 100, 0)


def test_release_returns_the_whole_reservation_once(store: Store) -> None:
    # The refund story: the handler failed, the payer keeps the money as credit.
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 70, "r1", EXP, NOW)
    assert store.credit_release("r1", NOW) is True
    assert balance(store) == (100, 0)
    assert store.credit_release("r1", NOW + 1) is True  # repeated: same answer, no more credit
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(100, 0, 100, 0)
    assert store.credit_release("unknown", NOW) is False


def test_the_journal_keeps_each_reservation(store: Store) -> None:
    store.credit_topup(ACCOUNT, 1000, "tx", NOW)
    store.credit_reserve(ACCOUNT, 300, "c", EXP, NOW)
    store.credit_reserve(ACCOUNT, 200, "r", EXP, NOW)
    store.credit_reserve(ACCOUNT, 100, "h", EXP + 0.5, NOW)
    store.credit_commit("c", 250, NOW)
    store.credit_release("r", NOW)
    assert store.credit_reservation("c", NOW) == CreditReservation(
        ACCOUNT, 300, "committed", 250, EXP
    )
    assert store.credit_reservation("r", NOW) == CreditReservation(ACCOUNT, 200, "released", 0, EXP)
    assert store.credit_reservation("h", NOW) == CreditReservation(
        ACCOUNT, 100, "held", 0, EXP + 0.5
    )
    # Reading changes nothing, and shows a reservation past its expiry as expired.
    assert store.credit_reservation("h", EXP + 0.5) == CreditReservation(
        ACCOUNT, 100, "expired", 0, EXP + 0.5
    )
    assert store.credit_reservation("h", NOW) == CreditReservation(
        ACCOUNT, 100, "held", 0, EXP + 0.5
    )


# -- expiry and reconcile -----------------------------------------------------------------------


def test_a_reservation_expires_exactly_at_expires_at(store: Store) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 100, "r1", EXP, NOW)
    assert balance(store, now=EXP - 0.001) == (0, 100)
    # From expires_at on, everything answers as if it were released already.
    assert balance(store, now=EXP) == (100, 0)
    assert store.credit_release("r1", EXP) is False
    assert store.credit_extend("r1", EXP + 60, EXP) is False  # too late to keep it alive
    assert store.credit_reservation("r1", EXP) == CreditReservation(ACCOUNT, 100, "expired", 0, EXP)
    assert store.credit_balance(ACCOUNT, EXP) == CreditBalance(100, 0, 100, 0)


@pytest.mark.parametrize("late", ["extend", "release", "reserve", "topup"])
def test_any_operation_after_expiry_sees_the_credit_back(store: Store, late: str) -> None:
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 100, "r1", EXP, NOW)
    if late == "extend":
        assert store.credit_extend("r1", EXP + 600, EXP + 1) is False
    elif late == "release":
        assert store.credit_release("r1", EXP + 1) is False
    elif late == "reserve":
        assert store.credit_reserve(ACCOUNT, 100, "r2", EXP + 60, EXP + 1) is True
        store.credit_release("r2", EXP + 1)
    else:
        assert store.credit_topup(ACCOUNT, 5, "tx2", EXP + 1) == 105
        store.credit_release("r1", EXP + 1)
    assert store.credit_reconcile(EXP + 2) == 0  # the operation already moved it
    assert conserved(store, ACCOUNT, EXP + 2)
    assert store.credit_balance(ACCOUNT, EXP + 2).charged == 0


def test_reconcile_returns_every_expired_reservation_once(store: Store) -> None:
    store.credit_topup(ACCOUNT, 1000, "tx", NOW)
    store.credit_topup(OTHER, 1000, "tx2", NOW)
    for i in range(5):
        store.credit_reserve(ACCOUNT, 100, f"a{i}", NOW + 10 + i, NOW)
        store.credit_reserve(OTHER, 100, f"o{i}", NOW + 10 + i, NOW)
    store.credit_commit("a0", 30, NOW)
    store.credit_release("o0", NOW)
    assert store.credit_reconcile(NOW + 9) == 0
    assert store.credit_reconcile(NOW + 12) == 4  # a1, a2, o1, o2
    assert store.credit_reconcile(NOW + 12) == 0
    assert store.credit_reconcile(NOW + 100) == 4
    assert store.credit_balance(ACCOUNT, NOW + 100) == CreditBalance(970, 0, 1000, 30)
    assert store.credit_balance(OTHER, NOW + 100) == CreditBalance(1000, 0, 1000, 0)
    assert store.credit_reservation("a3", NOW + 100) == CreditReservation(
        ACCOUNT, 100, "expired", 0, NOW + 13
    )


def test_reconcile_of_a_large_backlog(make_store: StoreFactory) -> None:
    # More than one batch of every backend (1000 for SQLite, 500 for Redis).
    store = make_store()
    store.credit_topup(ACCOUNT, 3000, "tx", NOW)
    for i in range(1100):
        assert store.credit_reserve(ACCOUNT, 2, f"r{i}", NOW + 1 + i % 3, NOW)
    assert store.credit_reconcile(NOW + 5) == 1100
    assert store.credit_balance(ACCOUNT, NOW + 5) == CreditBalance(3000, 0, 3000, 0)


def test_finished_reservations_are_kept_for_the_retention_then_forgotten(
    make_store: StoreFactory, request: pytest.FixtureRequest
) -> None:
    store = make_store()
    store.credit_topup(ACCOUNT, 100, "tx", NOW)
    store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW)
    store.credit_commit("r1", 10, NOW)
    kept_until = EXP + CREDIT_RECORD_RETENTION_SECONDS
    assert store.credit_commit("r1", 60, kept_until - 1) == 10
    later = kept_until + 60  # past SQLite's purge interval too
    store.credit_reserve(ACCOUNT, 1, "other", later + 100, later)  # purges, in passing
    if request.node.callspec.params["make_store"] not in (
        "redis",
        "redis-cluster",
        "redis-sentinel",
    ):  # Redis forgets in real time
        assert store.credit_reservation("r1", later) is None
        assert store.credit_commit("r1", 60, later) == 0
    # The totals outlive the journal, and a top-up ref is never forgotten.
    assert store.credit_topup(ACCOUNT, 100, "tx", later) == 89
    assert store.credit_balance(ACCOUNT, later) == CreditBalance(89, 1, 100, 10)


# -- amounts and arguments ----------------------------------------------------------------------


def test_amounts_are_exact_up_to_uint256(store: Store) -> None:
    big = MAX_CREDIT_AMOUNT - 10**40
    assert store.credit_topup(ACCOUNT, big, "tx1", NOW) == big
    assert store.credit_topup(ACCOUNT, 10**40, "tx2", NOW) == MAX_CREDIT_AMOUNT
    assert store.credit_reserve(ACCOUNT, MAX_CREDIT_AMOUNT - 1, "r1", EXP, NOW) is True
    assert store.credit_reserve(ACCOUNT, 2, "r2", EXP, NOW) is False
    assert store.credit_commit("r1", 10**70 + 9_999_999_999_999_999, NOW) == (
        10**70 + 9_999_999_999_999_999
    )
    available = MAX_CREDIT_AMOUNT - 10**70 - 9_999_999_999_999_999
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(
        available, 0, MAX_CREDIT_AMOUNT, 10**70 + 9_999_999_999_999_999
    )
    # 2**53 + 1 is where doubles stop being exact; 2**63 where 64-bit integers stop.
    for i, amount in enumerate([2**53 + 1, 2**63 + 1]):
        assert store.credit_reserve(ACCOUNT, amount, f"x{i}", EXP, NOW) is True
        assert store.credit_commit(f"x{i}", amount - 1, NOW) == amount - 1
    assert conserved(store, ACCOUNT, NOW)
    assert store.credit_balance(ACCOUNT, NOW).available == available - 2**53 - 2**63


def test_a_topup_past_uint256_is_refused(store: Store) -> None:
    store.credit_topup(ACCOUNT, MAX_CREDIT_AMOUNT, "tx1", NOW)
    store.credit_reserve(ACCOUNT, MAX_CREDIT_AMOUNT, "r1", EXP, NOW)
    store.credit_commit("r1", MAX_CREDIT_AMOUNT, NOW)
    # Lifetime totals count too: conservation must stay representable.
    with pytest.raises(ValueError, match="2\\*\\*256"):
        store.credit_topup(ACCOUNT, 1, "tx2", NOW)
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(
        0, 0, MAX_CREDIT_AMOUNT, MAX_CREDIT_AMOUNT
    )
    assert store.credit_topup(OTHER, 1, "tx2", NOW) == 1  # the ref was not used up


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.credit_topup(ACCOUNT, 0, "tx", NOW), ValueError),
        (lambda s: s.credit_topup(ACCOUNT, -5, "tx", NOW), ValueError),
        (lambda s: s.credit_topup(ACCOUNT, 1.0, "tx", NOW), TypeError),
        (lambda s: s.credit_topup(ACCOUNT, True, "tx", NOW), TypeError),
        (lambda s: s.credit_topup(ACCOUNT, MAX_CREDIT_AMOUNT + 1, "tx", NOW), ValueError),
        (lambda s: s.credit_topup(ACCOUNT, 1, "", NOW), ValueError),
        (lambda s: s.credit_topup(ACCOUNT, 1, "x" * 257, NOW), ValueError),
        (lambda s: s.credit_topup("0xpayer", 1, "tx", NOW), ValueError),
        (lambda s: s.credit_reserve(ACCOUNT, 0, "r", EXP, NOW), ValueError),
        (lambda s: s.credit_reserve(ACCOUNT, 1, "r", NOW, NOW), ValueError),
        (lambda s: s.credit_reserve(ACCOUNT, 1, "", EXP, NOW), ValueError),
        (lambda s: s.credit_commit("r", -1, NOW), ValueError),
        (lambda s: s.credit_commit("r", 0.5, NOW), TypeError),
        (lambda s: s.credit_balance("a|b", NOW), ValueError),
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(
    store: Store, call: Callable[[Store], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(store)
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(0, 0, 0, 0)


def test_credit_and_claims_live_apart(store: Store) -> None:
    # The same string as a replay key, a reservation id and a top-up ref: three things.
    key = "eip155:8453|0xasset|0xpayer|0x01"
    assert store.claim(key, "GET /a", "t", int(EXP), NOW) is ClaimResult.CLAIMED
    store.credit_topup(ACCOUNT, 5, key, NOW)
    assert store.credit_reserve(ACCOUNT, 5, key, EXP, NOW) is True
    assert store.state(key, NOW) == "held"
    assert store.credit_release(key, NOW) is True


def test_every_built_in_backend_supports_credit_and_others_refuse(store: Store) -> None:
    assert store.supports_credit is True

    class ClaimsOnly(Store):
        scheme: ClassVar[str] = "claims-only"

        def claim(self, *args: Any) -> ClaimResult:
            return ClaimResult.CLAIMED

        def release(self, key: str, token: str) -> bool:
            return True

        def mark_used(
            self, key: str, token: str, now: float | None = None, *, journal: Any = None
        ) -> bool:
            return True

        def state(self, key: str, now: float) -> str | None:
            return None

    old = ClaimsOnly()
    assert old.supports_credit is False
    for call in (
        lambda: old.credit_topup(ACCOUNT, 1, "tx", NOW),
        lambda: old.credit_reserve(ACCOUNT, 1, "r", EXP, NOW),
        lambda: old.credit_commit("r", 1, NOW),
        lambda: old.credit_release("r", NOW),
        lambda: old.credit_balance(ACCOUNT, NOW),
        lambda: old.credit_reservation("r", NOW),
        lambda: old.credit_reconcile(NOW),
    ):
        with pytest.raises(ConfigurationError, match="credit ledger"):
            call()


# -- sharing and backend specifics --------------------------------------------------------------


def test_handles_on_one_store_share_the_ledger(make_handle: StoreFactory) -> None:
    a, b = make_handle(), make_handle()
    a.credit_topup(ACCOUNT, 100, "tx", NOW)
    assert b.credit_topup(ACCOUNT, 100, "tx", NOW) == 100
    assert b.credit_reserve(ACCOUNT, 80, "r1", EXP, NOW) is True
    assert a.credit_reserve(ACCOUNT, 80, "r2", EXP, NOW) is False
    assert a.credit_commit("r1", 30, NOW) == 30  # any host can finish what another started
    assert b.credit_balance(ACCOUNT, NOW) == CreditBalance(70, 0, 100, 30)


def test_sqlite_keeps_credit_across_restarts_and_adds_tables_to_an_old_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn:  # a file from before the ledger existed
        conn.executescript(
            "CREATE TABLE x402gate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO x402gate_meta VALUES ('schema_version', '1');"
            "CREATE TABLE x402gate_replay (key TEXT PRIMARY KEY, resource TEXT NOT NULL,"
            " token TEXT NOT NULL, state TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;"
        )
    with open_store(f"sqlite:///{path}") as store:
        store.credit_topup(ACCOUNT, 2**64, "tx", NOW)
        store.credit_reserve(ACCOUNT, 10, "r1", EXP, NOW)
    with open_store(f"sqlite:///{path}") as store:
        assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(2**64 - 10, 10, 2**64, 0)
        assert store.credit_commit("r1", 4, NOW) == 4
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM x402gate_meta").fetchall() == [("1",)]
        row = conn.execute("SELECT available, charged FROM x402gate_credit_account").fetchone()
        assert row == (str(2**64 - 4), "4")  # decimal text: exact beyond 64 bits


@pytest.mark.redis
@pytest.mark.parametrize("decode_responses", [False, True])
def test_redis_keys_live_under_the_credit_prefix(redis_url: str, decode_responses: bool) -> None:
    import redis

    from x402gate.stores.redis import EXPIRY_GRACE_SECONDS

    client = redis.Redis.from_url(redis_url, decode_responses=decode_responses)
    store = open_store(client)
    try:
        store.credit_topup(ACCOUNT, 100, "tx", NOW)
        store.credit_reserve(ACCOUNT, 60, "r1", EXP, NOW)
        store.credit_reserve(ACCOUNT, 20, "r2", EXP, NOW)
        assert store.credit_commit("r1", 25, NOW) == 25
        assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(55, 20, 100, 25)
        keys = {k if isinstance(k, str) else k.decode() for k in client.keys("*")}
        assert keys == {
            f"x402gate:credit:acct:{ACCOUNT}",
            "x402gate:credit:topup:tx",
            "x402gate:credit:res:r1",
            "x402gate:credit:res:r2",
            f"x402gate:credit:held:{ACCOUNT}",
            "x402gate:credit:expiry",
        }
        # Money never expires; a finished reservation does, a retention after its expiry.
        for key in keys - {"x402gate:credit:res:r1"}:
            assert client.pttl(key) == -1, key
        kept_ms = (EXP - NOW + CREDIT_RECORD_RETENTION_SECONDS + EXPIRY_GRACE_SECONDS) * 1000
        assert kept_ms - 5000 < client.pttl("x402gate:credit:res:r1") <= kept_ms
    finally:
        client.close()


@pytest.mark.redis
def test_redis_errors_become_store_errors() -> None:
    store = open_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match="credit_reserve failed"):
        store.credit_reserve(ACCOUNT, 1, "r", EXP, NOW)
    store.close()


# -- races --------------------------------------------------------------------------------------


def assert_exactly_k_won(
    outcomes: list[Any], k: int, store: Store, amount: int, *, shared_ids: bool
) -> None:
    errors = [o for o in outcomes if isinstance(o, str)]
    assert not errors, errors
    won = {rid for o in outcomes for rid in o}
    assert len(won) == k
    if shared_ids:
        # No token: whoever asks for a live reservation's id with its amount is that request
        # (a re-sent command), so every worker sees all K, and no id was reserved twice.
        assert all(set(o) == won for o in outcomes)
    else:
        assert sum(len(o) for o in outcomes) == k
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(0, k * amount, k * amount, 0)


def run_threads(target: Callable[[int], str | Store], n: int, ids: list[str], amount: int) -> Any:
    barrier = threading.Barrier(n)
    results: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(target=reserve_race, args=(target(i), ids, amount, barrier, results))
        for i in range(n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return [results.get_nowait() for _ in range(n)]


@pytest.mark.usefixtures("fast_thread_switching")
def test_threads_never_overdraw_one_account(make_handle: StoreFactory) -> None:
    # Balance for exactly K reservations; every thread tries all ids (hence collides with every
    # other on each) and then more than K fresh ones of its own.
    store, k, amount = make_handle(), 25, 7
    store.credit_topup(ACCOUNT, k * amount, "tx", NOW)
    ids = [f"shared{i}" for i in range(k + 10)]
    outcomes = run_threads(lambda i: make_handle(), 12, ids, amount)
    assert_exactly_k_won(outcomes, k, store, amount, shared_ids=True)


@pytest.mark.usefixtures("fast_thread_switching")
def test_threads_with_their_own_ids_never_overdraw(make_handle: StoreFactory) -> None:
    store, k, amount, n = make_handle(), 30, 3, 8
    store.credit_topup(ACCOUNT, k * amount, "tx", NOW)
    per_thread = [[f"t{t}-{i}" for i in range(k)] for t in range(n)]
    barrier = threading.Barrier(n)
    results: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(
            target=reserve_race, args=(make_handle(), per_thread[t], amount, barrier, results)
        )
        for t in range(n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = [results.get_nowait() for _ in range(n)]
    assert_exactly_k_won(outcomes, k, store, amount, shared_ids=False)


def test_processes_never_overdraw_one_sqlite_account(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    k, amount, n = 20, 5, 4
    with open_store(url) as store:
        store.credit_topup(ACCOUNT, k * amount, "tx", NOW)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(n)
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=reserve_race,
                args=(url, [f"p{p}-{i}" for i in range(k)], amount, barrier, results),
            )
            for p in range(n)
        ]
        for proc in procs:
            proc.start()
        try:
            outcomes = [results.get(timeout=60) for _ in range(n)]
        finally:
            for proc in procs:
                proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * n
        assert_exactly_k_won(outcomes, k, store, amount, shared_ids=False)


@pytest.mark.usefixtures("fast_thread_switching")
def test_commit_and_release_of_one_reservation_race_to_one_outcome(
    make_handle: StoreFactory,
) -> None:
    store, rounds, n = make_handle(), 30, 6
    handles = [make_handle() for _ in range(n)]
    store.credit_topup(ACCOUNT, rounds * 10, "tx", NOW)
    answers: list[list[object]] = [[] for _ in range(rounds)]
    barrier = threading.Barrier(n)

    def contender(i: int) -> None:
        for r in range(rounds):
            if i == 0:
                assert handles[0].credit_reserve(ACCOUNT, 10, f"r{r}", EXP, NOW)
            barrier.wait(30)
            if i % 2:
                answers[r].append(handles[i].credit_commit(f"r{r}", 4, NOW))
            else:
                answers[r].append(handles[i].credit_release(f"r{r}", NOW))
            barrier.wait(30)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    charged = 0
    for r, got in enumerate(answers):
        # Either a commit won (every commit answers 4, every release False) or a release did.
        assert sorted(map(repr, got)) in (["4"] * 3 + ["False"] * 3, ["0"] * 3 + ["True"] * 3), r
        charged += 4 if 4 in got else 0
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(
        rounds * 10 - charged, 0, rounds * 10, charged
    )


@pytest.mark.usefixtures("fast_thread_switching")
def test_a_settlement_retried_concurrently_credits_once(make_handle: StoreFactory) -> None:
    store, n = make_handle(), 8
    handles = [make_handle() for _ in range(n)]
    barrier = threading.Barrier(n)
    answers: queue.Queue[int] = queue.Queue()

    def settle(i: int) -> None:
        barrier.wait(30)
        for r in range(20):
            answers.put(handles[i].credit_topup(ACCOUNT, 50, f"0xtx{r}", NOW))

    threads = [threading.Thread(target=settle, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.credit_balance(ACCOUNT, NOW) == CreditBalance(1000, 0, 1000, 0)
    assert max(answers.get_nowait() for _ in range(n * 20)) == 1000
