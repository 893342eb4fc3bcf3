"""Payment-channel state: the rules on every backend, and one winner per step under real races."""

from __future__ import annotations

import multiprocessing
import queue
import threading
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
    assert (state.balance, state.total_claimed, state.charged) == (BALANCE, 500, 500)
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


def test_money_is_any_uint256(store: Store) -> None:
    big = 2**256 - 1
    sync(store, balance=big)
    assert begin(store, "r", 0, ceiling=big).outcome is STARTED
    state = store.channel_commit(CHANNEL, "r", big, NOW)
    assert state is not None and state.charged == big
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

        def mark_used(self, key: str, token: str, now: float | None = None) -> bool:
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


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_step_whose_process_was_killed_is_forfeited(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/killed.db"
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
