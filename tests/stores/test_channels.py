"""Payment-channel state: the rules on every backend, and one winner per step under real races."""

from __future__ import annotations

import multiprocessing
import queue
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import pytest

from x402gate.errors import ConfigurationError
from x402gate.stores import ClaimResult, Store, open_store
from x402gate.stores.channels import (
    MAX_VOUCHER_SIGNATURE_LENGTH,
    ChannelBeginOutcome,
    ChannelState,
)

from ._channel_race import (
    BALANCE,
    CHANNEL,
    CONFIG,
    NOW,
    PRICE,
    SIGNATURE,
    begin_and_die,
    chase_steps,
    race_step,
)
from .conftest import StoreFactory

OTHER = "0x" + "cd" * 32
STARTED = ChannelBeginOutcome.STARTED


def sync(store: Store, channel: str = CHANNEL, **kw: Any) -> ChannelState:
    return store.channel_sync(
        channel,
        kw.get("config", CONFIG),
        balance=kw.get("balance", BALANCE),
        total_claimed=kw.get("total_claimed", 0),
        withdraw_requested_at=kw.get("withdraw_requested_at", 0),
        refund_nonce=kw.get("refund_nonce", 0),
        now=kw.get("now", NOW),
    )


def begin(store: Store, token: str, base: int, ceiling: int = PRICE, **kw: Any) -> Any:
    return store.channel_begin(
        kw.get("channel", CHANNEL),
        token,
        base=base,
        max_claimable=base + ceiling,
        signature=kw.get("signature", SIGNATURE),
        expires_at=kw.get("expires_at", NOW + 60),
        now=kw.get("now", NOW),
    )


def test_a_new_channel_starts_at_what_the_chain_says_was_claimed(store: Store) -> None:
    assert store.channel_get(CHANNEL) is None
    state = sync(store, total_claimed=500)
    assert (state.balance, state.total_claimed, state.charged, state.earned) == (
        BALANCE,
        500,
        500,
        500,
    )
    assert (state.max_claimable, state.signature, state.step) == (0, "0x", None)
    assert store.channel_get(CHANNEL.upper().replace("0X", "0x")) == state
    # A refresh takes the chain's balance and withdrawal, never goes back on claims.
    again = sync(
        store, balance=BALANCE - 7, total_claimed=100, withdraw_requested_at=42, now=NOW + 5
    )
    assert (again.balance, again.total_claimed, again.withdraw_requested_at) == (
        BALANCE - 7,
        500,
        42,
    )
    assert again.synced_at == NOW + 5
    with pytest.raises(ValueError):
        sync(store, config='{"other":1}')


def test_begin_commit_charges_inside_the_voucher(store: Store) -> None:
    sync(store)
    answer = begin(store, "r1", 0)
    assert answer.outcome is STARTED
    assert answer.state is not None and answer.state.step is not None
    assert answer.state.step.token == "r1" and answer.state.step.max_claimable == PRICE
    state = store.channel_commit(CHANNEL, "r1", 300, NOW + 1)
    assert state is not None
    assert (state.charged, state.max_claimable, state.signature) == (300, PRICE, SIGNATURE)
    assert state.step is None and state.last_request_at == NOW + 1
    # Commit twice is refused and charges nothing more.
    assert store.channel_commit(CHANNEL, "r1", 300, NOW + 1) is None
    assert store.channel_get(CHANNEL) == state
    # The next voucher must be signed on 300; a charge above its ceiling is cut to it.
    assert begin(store, "r2", 300, ceiling=50).outcome is STARTED
    after = store.channel_commit(CHANNEL, "r2", 10**30, NOW + 2)
    assert after is not None and after.charged == 350 and after.max_claimable == 350


def test_a_second_request_for_the_same_step_is_busy(store: Store) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    assert begin(store, "r1", 0).outcome is STARTED  # a re-sent command: same answer
    busy = begin(store, "r2", 0)
    assert busy.outcome is ChannelBeginOutcome.BUSY
    assert store.channel_release(CHANNEL, "r1")
    assert not store.channel_release(CHANNEL, "r1")
    assert store.channel_commit(CHANNEL, "r1", 1, NOW) is None
    assert begin(store, "r2", 0).outcome is STARTED
    assert not store.channel_release(CHANNEL, "r1")


def test_a_mismatching_base_gets_the_state_for_the_corrective_402(store: Store) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    assert store.channel_commit(CHANNEL, "r1", 400, NOW) is not None
    for base in (0, 399, 401, 10**6):
        answer = begin(store, f"b{base}", base)
        assert answer.outcome is ChannelBeginOutcome.MISMATCH
        assert answer.state is not None and answer.state.charged == 400
        assert answer.state.max_claimable == PRICE and answer.state.signature == SIGNATURE
    assert store.channel_get(CHANNEL) is not None
    assert store.channel_get(CHANNEL).step is None  # type: ignore[union-attr]


def test_unknown_channels_and_vouchers_above_the_balance(store: Store) -> None:
    assert begin(store, "r1", 0).outcome is ChannelBeginOutcome.UNKNOWN
    assert store.channel_commit(CHANNEL, "r1", 1, NOW) is None
    assert not store.channel_release(CHANNEL, "r1")
    assert not store.channel_mark_claimed(CHANNEL, 0, NOW)
    sync(store, balance=PRICE - 1)
    assert begin(store, "r1", 0).outcome is ChannelBeginOutcome.INSUFFICIENT
    sync(store, balance=PRICE)
    assert begin(store, "r1", 0).outcome is STARTED


@pytest.mark.parametrize(
    ("balance", "ceiling", "outcome"),
    [
        (1000, 999, STARTED),
        (1000, 1000, STARTED),
        (1000, 1001, ChannelBeginOutcome.INSUFFICIENT),
        (999, 1000, ChannelBeginOutcome.INSUFFICIENT),  # fewer digits
        (10**20, 10**19 + 1, STARTED),  # more digits
        (10**20, 9 * 10**19 + 9, STARTED),  # more digits, a larger first digit below
        (2 * 10**19, 10**20, ChannelBeginOutcome.INSUFFICIENT),
        (0, 1, ChannelBeginOutcome.INSUFFICIENT),
        (2**256 - 1, 2**256 - 1, STARTED),
    ],
)
def test_a_voucher_is_held_to_the_balance_at_any_size(
    store: Store, balance: int, ceiling: int, outcome: ChannelBeginOutcome
) -> None:
    sync(store, balance=balance)
    answer = begin(store, "r1", 0, ceiling=ceiling)
    assert answer.outcome is outcome
    assert store.channel_get(CHANNEL) == answer.state
    assert (answer.state.step is not None) == (outcome is STARTED)


def test_an_expired_step_is_taken_over_and_its_charge_forfeited(store: Store) -> None:
    sync(store)
    assert begin(store, "dead", 0, expires_at=NOW + 10).outcome is STARTED
    assert begin(store, "r2", 0, now=NOW + 9.5).outcome is ChannelBeginOutcome.BUSY
    taken = begin(store, "r2", 0, now=NOW + 10, expires_at=NOW + 70)
    assert taken.outcome is STARTED
    assert store.channel_commit(CHANNEL, "dead", PRICE, NOW + 11) is None
    assert not store.channel_release(CHANNEL, "dead")
    state = store.channel_commit(CHANNEL, "r2", 5, NOW + 11)
    assert state is not None and state.charged == 5


def test_a_running_step_extends_its_expiry(store: Store) -> None:
    sync(store)
    assert begin(store, "long", 0, expires_at=NOW + 10).outcome is STARTED
    assert store.channel_extend(CHANNEL, "long", NOW + 100)
    assert store.channel_extend(CHANNEL, "long", NOW + 50)  # never earlier
    assert (
        begin(store, "r2", 0, now=NOW + 99, expires_at=NOW + 200).outcome
        is ChannelBeginOutcome.BUSY
    )
    assert not store.channel_extend(CHANNEL, "r2", NOW + 500)
    state = store.channel_get(CHANNEL)
    assert state is not None and state.step is not None and state.step.expires_at == NOW + 100
    assert store.channel_commit(CHANNEL, "long", 3, NOW + 99) is not None
    assert not store.channel_extend(CHANNEL, "long", NOW + 500)
    assert not store.channel_extend(OTHER, "long", NOW + 500)


def test_an_expired_step_nobody_took_can_still_be_committed_by_its_owner(store: Store) -> None:
    sync(store)
    assert begin(store, "slow", 0, expires_at=NOW + 10).outcome is STARTED
    state = store.channel_commit(CHANNEL, "slow", 7, NOW + 30)
    assert state is not None and state.charged == 7


def test_expired_step_and_mismatch_clears_the_dead_step(store: Store) -> None:
    sync(store)
    assert begin(store, "dead", 0, expires_at=NOW + 10).outcome is STARTED
    assert begin(store, "r2", 123, now=NOW + 20).outcome is ChannelBeginOutcome.MISMATCH
    assert store.channel_commit(CHANNEL, "dead", 1, NOW + 21) is None


def test_claims_bookkeeping_and_listing(store: Store) -> None:
    sync(store)
    sync(store, OTHER)
    assert store.channel_claimable() == []
    for channel, charge, at in ((OTHER, 20, NOW + 1), (CHANNEL, 10, NOW + 2)):
        assert begin(store, "r", 0, channel=channel).outcome is STARTED
        assert store.channel_commit(channel, "r", charge, at) is not None
    due = store.channel_claimable()
    assert [c.channel_id for c in due] == [OTHER, CHANNEL]
    assert [c.channel_id for c in store.channel_claimable(limit=1)] == [OTHER]
    assert not store.channel_mark_claimed(OTHER, 21, NOW)  # never beyond what was charged
    assert store.channel_mark_claimed(OTHER, 20, NOW)
    assert store.channel_mark_claimed(OTHER, 5, NOW)  # never backwards
    other = store.channel_get(OTHER)
    assert other is not None and other.total_claimed == 20
    assert [c.channel_id for c in store.channel_claimable()] == [CHANNEL]
    assert store.channel_mark_claimed(CHANNEL, 4, NOW)
    assert [c.channel_id for c in store.channel_claimable()] == [CHANNEL]
    assert store.channel_mark_claimed(CHANNEL, 10, NOW)
    assert store.channel_claimable() == []
    # A chain read showing a claim the store missed counts it as charged and claimed.
    state = sync(store, total_claimed=15)
    assert (state.charged, state.total_claimed) == (15, 15)


def test_a_chain_ahead_of_the_store_ends_the_step_signed_below_it(store: Store) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    state = sync(store, total_claimed=40)  # the store had lost charges the chain has claimed
    assert (state.charged, state.step) == (40, None)
    assert store.channel_commit(CHANNEL, "r1", 5, NOW) is None
    assert begin(store, "r2", 40).outcome is STARTED
    assert sync(store, total_claimed=40).step is not None  # not passed: the step stays


def test_a_metered_step_moves_charged_by_its_step_and_earned_by_its_charge(
    store: Store,
) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    state = store.channel_commit(CHANNEL, "r1", 300, NOW + 1, step=PRICE)
    assert state is not None
    # The client was told the full step and signs the next voucher on it; the seller earned 300.
    assert (state.charged, state.earned, state.max_claimable) == (PRICE, 300, PRICE)
    assert store.channel_get(CHANNEL) == state
    assert begin(store, "r2", 300).outcome is ChannelBeginOutcome.MISMATCH
    assert begin(store, "r2", PRICE, ceiling=50).outcome is STARTED
    # A step beyond the voucher is cut to it, and so is a charge beyond the step.
    after = store.channel_commit(CHANNEL, "r2", 10**30, NOW + 2, step=10**6)
    assert after is not None
    assert (after.charged, after.earned) == (PRICE + 50, 350)
    # Without a step the whole charge is the step, as for a flat price.
    assert begin(store, "r3", PRICE + 50).outcome is STARTED
    flat = store.channel_commit(CHANNEL, "r3", 20, NOW + 3)
    assert flat is not None and (flat.charged, flat.earned) == (PRICE + 70, 370)
    # Nothing used: the step still moves the client's counter, nothing is earned.
    assert begin(store, "r4", PRICE + 70).outcome is STARTED
    idle = store.channel_commit(CHANNEL, "r4", 0, NOW + 4, step=5)
    assert idle is not None and (idle.charged, idle.earned) == (PRICE + 75, 370)
    with pytest.raises(ValueError):
        store.channel_commit(CHANNEL, "r5", 1, NOW, step=-1)
    with pytest.raises(ValueError):
        store.channel_commit(CHANNEL, "r5", 1, NOW, step=2**256)
    with pytest.raises(TypeError):
        store.channel_commit(CHANNEL, "r5", 1, NOW, step="5")  # type: ignore[arg-type]


def test_claims_stop_at_what_was_earned(store: Store) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    assert store.channel_commit(CHANNEL, "r1", 0, NOW + 1, step=PRICE) is not None
    assert store.channel_claimable() == []  # charged the step, earned nothing: nothing to claim
    assert not store.channel_mark_claimed(CHANNEL, 1, NOW)
    assert begin(store, "r2", PRICE).outcome is STARTED
    assert store.channel_commit(CHANNEL, "r2", 40, NOW + 2, step=PRICE) is not None
    due = store.channel_claimable()
    assert [(c.channel_id, c.earned, c.charged) for c in due] == [(CHANNEL, 40, 2 * PRICE)]
    assert not store.channel_mark_claimed(CHANNEL, 41, NOW)
    assert store.channel_mark_claimed(CHANNEL, 40, NOW)
    assert store.channel_claimable() == []
    state = store.channel_get(CHANNEL)
    assert state is not None and (state.total_claimed, state.earned) == (40, 40)


def test_a_chain_ahead_of_what_was_earned_raises_it(store: Store) -> None:
    sync(store)
    assert begin(store, "r1", 0).outcome is STARTED
    assert store.channel_commit(CHANNEL, "r1", 10, NOW, step=PRICE) is not None
    # Claimed on chain, not yet known here, within what was charged: earned, charged unchanged.
    state = sync(store, total_claimed=60)
    assert (state.total_claimed, state.earned, state.charged) == (60, 60, PRICE)
    assert store.channel_claimable() == []
    assert begin(store, "r2", PRICE).outcome is STARTED
    # Beyond what was charged: both counters rise to it and the step below is forfeited.
    state = sync(store, total_claimed=PRICE + 5)
    assert (state.earned, state.charged, state.step) == (PRICE + 5, PRICE + 5, None)


def test_money_is_any_uint256(store: Store) -> None:
    big = 2**256 - 1
    sync(store, balance=big)
    assert begin(store, "r", 0, ceiling=big).outcome is STARTED
    state = store.channel_commit(CHANNEL, "r", big, NOW)
    assert state is not None and state.charged == big and state.earned == big
    assert store.channel_get(CHANNEL) == state


def test_client_values_are_checked_and_bounded(store: Store) -> None:
    sync(store)
    with pytest.raises(ValueError):
        begin(store, "r", 0, channel="0x1234")
    with pytest.raises(ValueError):
        begin(store, "r", 0, signature="0x" + "a" * MAX_VOUCHER_SIGNATURE_LENGTH)
    with pytest.raises(ValueError):
        begin(store, "r", 0, signature="nothex")
    with pytest.raises(ValueError):
        begin(store, "r", 5, ceiling=0)
    with pytest.raises(ValueError):
        begin(store, "r", 0, ceiling=2**256)
    with pytest.raises(ValueError):
        sync(store, config="x" * 5000)
    with pytest.raises(TypeError):
        store.channel_commit(CHANNEL, "r", 1.5, NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.channel_claimable(limit=0)


def test_every_built_in_backend_keeps_channels_and_others_refuse(store: Store) -> None:
    assert store.supports_channels is True

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
    assert old.supports_channels is False
    for call in (
        lambda: sync(old),
        lambda: old.channel_get(CHANNEL),
        lambda: begin(old, "r", 0),
        lambda: old.channel_commit(CHANNEL, "r", 1, NOW),
        lambda: old.channel_extend(CHANNEL, "r", NOW),
        lambda: old.channel_release(CHANNEL, "r"),
        lambda: old.channel_mark_claimed(CHANNEL, 1, NOW),
        lambda: old.channel_claimable(),
    ):
        with pytest.raises(ConfigurationError, match="payment-channel state"):
            call()


# -- records written before ``earned`` existed: they earned what they charged ------------------


def test_sqlite_stores_on_one_file_see_each_others_steps(tmp_path: Path) -> None:
    # Two stores on one file, as two processes of a server: each remembers the rows it last
    # wrote, and each must still act on what the other wrote since.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with open_store(url) as a, open_store(url) as b:
        sync(a)
        assert begin(a, "r1", 0).outcome is STARTED
        assert a.channel_commit(CHANNEL, "r1", 50, NOW, step=PRICE) is not None
        assert begin(a, "r2", PRICE).outcome is STARTED
        # While r2 runs, the other process records a claim and newer chain figures.
        assert b.channel_mark_claimed(CHANNEL, 50, NOW + 1)
        sync(b, balance=10**9, total_claimed=PRICE - 10, now=NOW + 2)
        state = a.channel_commit(CHANNEL, "r2", 30, NOW + 3, step=PRICE)
        assert state is not None
        assert (state.charged, state.earned, state.total_claimed, state.balance) == (
            2 * PRICE,
            PRICE + 20,
            PRICE - 10,
            10**9,
        )
        assert b.channel_get(CHANNEL) == state
        # b last saw the channel before that commit; its next step builds on the commit.
        assert begin(b, "r3", PRICE).outcome is ChannelBeginOutcome.MISMATCH
        assert begin(b, "r3", 2 * PRICE).outcome is STARTED
        # a last wrote the channel idle: it finds b's step.
        assert begin(a, "r4", 2 * PRICE).outcome is ChannelBeginOutcome.BUSY
        assert a.channel_commit(CHANNEL, "r3", PRICE, NOW + 4) is not None  # the token's, wherever
        assert b.channel_commit(CHANNEL, "r3", PRICE, NOW + 4) is None
        after = a.channel_get(CHANNEL)
        assert after is not None and (after.charged, after.earned, after.step) == (
            3 * PRICE,
            2 * PRICE + 20,
            None,
        )


# The channel table as the first schema version made it, before the ``earned`` column.
_OLD_CHANNEL_TABLE = """
CREATE TABLE x402gate_channel (
    id TEXT PRIMARY KEY, config TEXT NOT NULL, balance TEXT NOT NULL,
    total_claimed TEXT NOT NULL, charged TEXT NOT NULL, max_claimable TEXT NOT NULL,
    signature TEXT NOT NULL, withdraw_requested_at TEXT NOT NULL, refund_nonce TEXT NOT NULL,
    synced_at REAL NOT NULL, last_request_at REAL NOT NULL,
    unclaimed INTEGER NOT NULL CHECK (unclaimed IN (0, 1)),
    step_token TEXT, step_base TEXT, step_max_claimable TEXT, step_signature TEXT,
    step_expires_at REAL
) WITHOUT ROWID
"""
_OLD_COLUMNS = (
    "id, config, balance, total_claimed, charged, max_claimable, signature,"
    " withdraw_requested_at, refund_nonce, synced_at, last_request_at, unclaimed"
)


def _old_row(channel: str, charged: int, claimed: int) -> tuple[object, ...]:
    return (channel, CONFIG, str(BALANCE), str(claimed), str(charged), str(charged), SIGNATURE,
            "0", "0", NOW, NOW + 1, int(charged > claimed))  # fmt: skip


def test_a_sqlite_file_from_before_earned_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE x402gate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO x402gate_meta VALUES ('schema_version', '1')")
        conn.execute(_OLD_CHANNEL_TABLE)
        conn.execute(
            f"INSERT INTO x402gate_channel ({_OLD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            _old_row(CHANNEL, 700, 200),
        )
    with open_store(f"sqlite:///{path}") as store:
        state = store.channel_get(CHANNEL)
        assert state is not None
        assert (state.charged, state.earned, state.total_claimed) == (700, 700, 200)
        assert [c.channel_id for c in store.channel_claimable()] == [CHANNEL]
        # The next metered step builds on it.
        assert begin(store, "r1", 700).outcome is STARTED
        after = store.channel_commit(CHANNEL, "r1", 30, NOW + 2, step=100)
        assert after is not None and (after.charged, after.earned) == (800, 730)
        assert not store.channel_mark_claimed(CHANNEL, 731, NOW)
        assert store.channel_mark_claimed(CHANNEL, 730, NOW)
        assert store.channel_claimable() == []
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT earned FROM x402gate_channel").fetchall() == [("730",)]
        # An older x402gate sharing the file writes rows without the column: read as charged.
        with conn:
            conn.execute(
                f"INSERT INTO x402gate_channel ({_OLD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                _old_row(OTHER, 900, 0),
            )
    with open_store(f"sqlite:///{path}") as store:
        other = store.channel_get(OTHER)
        assert other is not None and (other.charged, other.earned) == (900, 900)
        assert [c.channel_id for c in store.channel_claimable()] == [OTHER]
        assert store.channel_mark_claimed(OTHER, 900, NOW)


@pytest.mark.redis
def test_a_redis_channel_from_before_earned_keeps_working(redis_url: str) -> None:
    import redis

    prefix = "chold:"
    with open_store(f"{redis_url}?key_prefix={prefix}") as store:
        sync(store)
        assert begin(store, "r1", 0).outcome is STARTED
        assert store.channel_commit(CHANNEL, "r1", PRICE, NOW + 1) is not None
        client = redis.Redis.from_url(redis_url)
        # What an older x402gate left: the same hash without the field.
        assert client.hdel(f"{prefix}channel:{CHANNEL}", "earned") == 1
        client.close()
        state = store.channel_get(CHANNEL)
        assert state is not None and (state.charged, state.earned) == (PRICE, PRICE)
        assert [c.earned for c in store.channel_claimable()] == [PRICE]
        assert begin(store, "r2", PRICE).outcome is STARTED
        after = store.channel_commit(CHANNEL, "r2", 30, NOW + 2, step=100)
        assert after is not None and (after.charged, after.earned) == (PRICE + 100, PRICE + 30)
        assert not store.channel_mark_claimed(CHANNEL, PRICE + 31, NOW)
        assert store.channel_mark_claimed(CHANNEL, PRICE + 30, NOW)
        assert store.channel_claimable() == []


# -- real races: of N concurrent begin-steps for one step exactly one wins ----------------------


def _collect(results: Any, n: int) -> list[str]:
    got = sorted((results.get(timeout=120) for _ in range(n)), key=lambda r: r[0])
    return [outcome for _, outcome in got]


def _check_one_winner(outcomes: list[str], store: Store, steps: int) -> None:
    assert outcomes.count("committed") == 1, outcomes
    assert set(outcomes) <= {"committed", "busy", "mismatch"}, outcomes
    state = store.channel_get(CHANNEL)
    assert state is not None and state.charged == steps * PRICE and state.step is None


def test_threads_race_for_one_step(make_handle: StoreFactory) -> None:
    n = 16
    stores = [make_handle() for _ in range(n)]
    sync(stores[0])
    for step in range(3):
        barrier = threading.Barrier(n)
        results: queue.Queue[tuple[int, str]] = queue.Queue()
        threads = [
            threading.Thread(target=race_step, args=(stores[i], i, step * PRICE, barrier, results))
            for i in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        _check_one_winner(_collect(results, n), stores[0], step + 1)


def _race_processes(url: str, n: int, base: int) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=race_step, args=(url, i, base, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    outcomes = _collect(results, n)
    for p in procs:
        p.join(120)
    return outcomes


def test_processes_race_for_one_step_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/channels.db"
    store = open_store(url)
    sync(store)
    _check_one_winner(_race_processes(url, 4, 0), store, 1)
    _check_one_winner(_race_processes(url, 4, PRICE), store, 2)
    store.close()


@pytest.mark.redis
def test_two_redis_clients_race_for_one_step(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=chrace:"
    store = open_store(url)
    sync(store)
    _check_one_winner(_race_processes(url, 2, 0), store, 1)
    store.close()


# -- consecutive steps: many clients of one channel, no step served twice ----------------------


def _check_consecutive(outcomes: list[Any], store: Store, workers: int, steps: int) -> None:
    bases = []
    for outcome in outcomes:
        assert isinstance(outcome, list), outcome
        bases.extend(outcome)
    # Every step was served exactly once, on the amount charged before it.
    assert sorted(bases) == [i * PRICE for i in range(workers * steps)]
    state = store.channel_get(CHANNEL)
    assert state is not None and state.charged == workers * steps * PRICE and state.step is None


def test_threads_chase_consecutive_steps(make_handle: StoreFactory) -> None:
    n, steps = 8, 5
    stores = [make_handle() for _ in range(n)]
    sync(stores[0])
    barrier = threading.Barrier(n)
    results: queue.Queue[tuple[int, Any]] = queue.Queue()
    threads = [
        threading.Thread(target=chase_steps, args=(stores[i], i, steps, barrier, results))
        for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    _check_consecutive(_collect(results, n), stores[0], n, steps)


def _chase_processes(url: str, n: int, steps: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=chase_steps, args=(url, i, steps, barrier, results)) for i in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = _collect(results, n)
    for p in procs:
        p.join(120)
    return outcomes


def test_processes_chase_consecutive_steps_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chase.db"
    with open_store(url) as store:
        sync(store)
        _check_consecutive(_chase_processes(url, 4, 5), store, 4, 5)


@pytest.mark.redis
def test_two_redis_clients_chase_consecutive_steps(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix=chchase:"
    with open_store(url) as store:
        sync(store)
        _check_consecutive(_chase_processes(url, 2, 10), store, 2, 10)


# -- a server killed between its answer and its commit: the charge is forfeited, once ----------


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_a_step_whose_process_was_killed_is_forfeited(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/killed.db"
    elif backend == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"{request.getfixturevalue('redis_url')}?key_prefix=chkill:"
    with open_store(url) as store:
        sync(store)
        proc = multiprocessing.get_context("spawn").Process(target=begin_and_die, args=(url,))
        proc.start()
        proc.join(60)
        assert proc.exitcode == -9
        state = store.channel_get(CHANNEL)
        assert state is not None and state.step is not None and state.step.token == "doomed"
        # Until the step expires the channel is busy; then the next request takes it over.
        assert begin(store, "next", 0, now=NOW + 29).outcome is ChannelBeginOutcome.BUSY
        taken = begin(store, "next", 0, now=NOW + 30, expires_at=NOW + 90)
        assert taken.outcome is STARTED
        assert taken.state is not None and taken.state.charged == 0  # nothing was taken
        assert store.channel_commit(CHANNEL, "doomed", PRICE, NOW + 31) is None
        after = store.channel_commit(CHANNEL, "next", PRICE, NOW + 31)
        assert after is not None and after.charged == PRICE
