"""Redis Cluster and Sentinel: URLs, ``wait_replicas``, and failovers in the middle of a load run.

Real servers only (:mod:`x402gate.testing.redis_cluster`). A load run spends credit and steps
payment channels from several threads while a primary fails over; afterwards every write the
store confirmed is there exactly once, every charge is on its reservation, and the ledger's
totals add up. A lossy failover (the primary killed while its replica is cut off) shows the
window the docs describe: with ``wait_replicas`` off, confirmed writes are lost; with it on,
only writes the store refused (``StoreError``) are.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from x402gate.errors import ConfigurationError, StoreError
from x402gate.stores import ClaimResult, Store, open_store
from x402gate.stores.channels import ChannelBeginOutcome
from x402gate.stores.redis import RedisStore
from x402gate.testing.redis_cluster import LocalRedisCluster, LocalRedisSentinel, key_slot
from x402gate.testing.redis_server import RedisServerError, find_redis_server

from ._channel_race import BALANCE, CONFIG, PRICE, SIGNATURE
from ._credit import ACCOUNT, NOW

pytest.importorskip("redis")
pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]

EXPIRES = NOW + 3600
TOP_UP = 10**6
HOLD, CHARGE = 700, 500


def _with(url: str, **options: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


# -- URLs and options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "no database number"),
        ("redis+cluster:///?node=127.0.0.1:7000", "no seed node"),
        ("redis+sentinel:///svc", "no sentinel"),
        ("redis+cluster://127.0.0.1:7000?node=nohost", "not host:port"),
        ("redis+sentinel://127.0.0.1:26379", "/<service>"),
        ("redis+sentinel://127.0.0.1:26379/svc/x", "/<service>"),
        ("redis+sentinel://127.0.0.1:26379/svc?sentinel=h:99999", "not host:port"),
        ("redis://127.0.0.1:6379?wait_replicas=two", "whole number"),
        ("redis://127.0.0.1:6379?wait_replicas=-1", "negative"),
        ("redis://127.0.0.1:6379?wait_timeout=0", "wait_timeout"),
        ("redis://127.0.0.1:6379?wait_replicas=1&wait_replicas=2", "repeated"),
    ],
)
def test_bad_cluster_and_sentinel_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(url)


def test_sentinel_passwords_never_show() -> None:
    url = "redis+sentinel://:data-secret@127.0.0.1:1/svc?sentinel_password=sentinel-secret"
    store = open_store(_with(url, socket_timeout=0.2))
    shown = repr(store)
    assert "data-secret" not in shown and "sentinel-secret" not in shown
    with pytest.raises(StoreError) as caught:
        store.claim("k", "GET /a", "t", int(NOW) + 60, NOW)
    chain = f"{caught.value} {caught.value.__cause__}"
    assert "data-secret" not in chain and "sentinel-secret" not in chain


def test_an_unreachable_cluster_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot reach the cluster") as caught:
        open_store("redis+cluster://:cluster-secret@127.0.0.1:1?socket_timeout=0.2")
    assert "cluster-secret" not in str(caught.value) and caught.value.__cause__ is None


def test_cluster_key_prefix_may_not_carry_its_own_hash_tag(redis_cluster_url: str) -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        open_store(_with(redis_cluster_url, key_prefix="{mine}:"))


def test_multi_key_scripts_keep_their_keys_in_one_slot(redis_cluster_url: str) -> None:
    store = open_store(redis_cluster_url)
    assert isinstance(store, RedisStore) and store.cluster
    store.credit_topup(ACCOUNT, TOP_UP, "ref-1", NOW)
    assert store.credit_reserve(ACCOUNT, HOLD, "res-1", EXPIRES, NOW)
    for i in range(12):
        store.channel_sync(_channel(i), CONFIG, balance=BALANCE, total_claimed=0,
                           withdraw_requested_at=0, refund_nonce=0, now=NOW)  # fmt: skip
        token = f"t{i}"
        store.channel_begin(_channel(i), token, base=0, max_claimable=PRICE,
                            signature=SIGNATURE, expires_at=NOW + 60, now=NOW)  # fmt: skip
        store.channel_commit(_channel(i), token, PRICE, NOW)
    keys = [
        k.decode() for k in store.client.scan_iter(match="{x402gate:*", target_nodes="primaries")
    ]
    ledger = [k for k in keys if k.startswith("{x402gate:credit}")]
    assert len(ledger) >= 4 and len({key_slot(k) for k in ledger}) == 1
    # Each channel's hash sits in the slot of the index it is listed in; channels spread.
    channel_slots = set()
    for i in range(12):
        (key,) = [k for k in keys if k.endswith(_channel(i))]
        tag = key[: key.index("}") + 1]
        assert f"{tag}:unclaimed" in keys
        assert key_slot(key) == key_slot(f"{tag}:unclaimed")
        channel_slots.add(key_slot(key))
    assert len(channel_slots) > 1
    assert {s.channel_id for s in store.channel_claimable(100)} == {_channel(i) for i in range(12)}
    assert len(store.channel_claimable(5)) == 5
    store.close()


def test_closing_a_sentinel_store_closes_its_connections_to_the_sentinels(
    redis_sentinel_url: str,
) -> None:
    store = open_store(redis_sentinel_url)
    assert store.claim("k", "GET /a", "t", int(NOW) + 60, NOW) is ClaimResult.CLAIMED
    pools = [store.client.connection_pool]  # type: ignore[attr-defined]
    pools += [s.connection_pool for s in pools[0].sentinel_manager.sentinels]

    def open_sockets() -> int:
        return sum(c._sock is not None for p in pools for c in p._available_connections)

    # Asking a sentinel for the primary, then the primary: two connections at least.
    assert open_sockets() >= 2
    store.close()
    assert open_sockets() == 0


# -- wait_replicas ---------------------------------------------------------------------------


def test_wait_for_more_replicas_than_exist_fails_closed(redis_sentinel_url: str) -> None:
    store = open_store(_with(redis_sentinel_url, wait_replicas=2, wait_timeout=0.2))
    with pytest.raises(StoreError, match="1 of 2 replicas"):
        store.credit_topup(ACCOUNT, TOP_UP, "ref-1", NOW)
    # Claims and reads do not wait; the top-up itself reached the primary and its one replica.
    assert store.claim("k", "GET /a", "t", int(NOW) + 60, NOW) is ClaimResult.CLAIMED
    assert store.credit_balance(ACCOUNT, NOW).topped_up == TOP_UP
    with pytest.raises(StoreError, match="1 of 2 replicas"):
        store.channel_sync(_channel(1), CONFIG, balance=BALANCE, total_claimed=0,
                           withdraw_requested_at=0, refund_nonce=0, now=NOW)  # fmt: skip
    store.close()
    enough = open_store(_with(redis_sentinel_url, wait_replicas=1))
    assert enough.credit_reserve(ACCOUNT, HOLD, "res-1", EXPIRES, NOW)
    assert enough.credit_commit("res-1", CHARGE, NOW) == CHARGE
    enough.close()


# -- load runs through a failover ------------------------------------------------------------


def _channel(i: int) -> str:
    return "0x" + f"{i:064x}"


@dataclass
class _Ledger:
    """What the load run's threads saw: confirmed outcomes and the attempts left unknown."""

    confirmed_charges: dict[str, int] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    errors: int = 0
    channel_confirmed: dict[str, int] = field(default_factory=dict)
    channel_unknown: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _spend(store: Store, worker: int, ledger: _Ledger, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"w{worker}-r{n}"
        with ledger.lock:
            ledger.attempted.add(rid)
        try:
            if not store.credit_reserve(ACCOUNT, HOLD, rid, EXPIRES, NOW):
                continue
            charged = store.credit_commit(rid, CHARGE, NOW)
        except StoreError:
            with ledger.lock:
                ledger.errors += 1
            time.sleep(0.05)
            continue
        with ledger.lock:
            ledger.confirmed_charges[rid] = charged


def _step_channel(store: Store, worker: int, ledger: _Ledger, stop: threading.Event) -> None:
    channel = _channel(1000 + worker)
    confirmed = unknown = 0
    while not stop.is_set():
        token = f"c{worker}-{confirmed}-{unknown}"
        try:
            state = store.channel_get(channel)
            assert state is not None
            begun = store.channel_begin(
                channel, token, base=state.charged, max_claimable=state.charged + PRICE,
                signature=SIGNATURE, expires_at=NOW + 60, now=NOW,
            )  # fmt: skip
            if begun.outcome is not ChannelBeginOutcome.STARTED:
                raise AssertionError(f"{channel}: {begun.outcome}")
        except StoreError:
            time.sleep(0.05)
            continue
        try:
            store.channel_commit(channel, token, PRICE, NOW)
        except StoreError:
            unknown += 1
            time.sleep(0.05)
            # A step whose commit went unanswered still holds the channel: release it, as the
            # gate does, so the next step can begin (a committed step is not released). Kept
            # up past the end of the run, as long as the store may take to come back: a step
            # left held at the end would only expire later.
            give_up = time.monotonic() + 30
            while time.monotonic() < give_up:
                try:
                    store.channel_release(channel, token)
                    break
                except StoreError:
                    time.sleep(0.05)
            continue
        confirmed += 1
    with ledger.lock:
        ledger.channel_confirmed[channel] = confirmed
        ledger.channel_unknown[channel] = unknown


def _load_run(
    url: str, failover: Callable[[], object], workers: int = 4
) -> tuple[Store, _Ledger, float]:
    """Spend credit and step channels from ``workers`` threads each, fail over, and stop."""
    setup = open_store(url)
    setup.credit_topup(ACCOUNT, TOP_UP, "load-ref", NOW)
    for i in range(workers):
        setup.channel_sync(_channel(1000 + i), CONFIG, balance=BALANCE, total_claimed=0,
                           withdraw_requested_at=0, refund_nonce=0, now=NOW)  # fmt: skip
    ledger, stop = _Ledger(), threading.Event()
    stores = [open_store(url) for _ in range(2 * workers)]
    threads = [
        threading.Thread(target=_spend, args=(stores[i], i, ledger, stop)) for i in range(workers)
    ] + [
        threading.Thread(target=_step_channel, args=(stores[workers + i], i, ledger, stop))
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        before = len(ledger.confirmed_charges)
        started = time.monotonic()
        failover()
        took = time.monotonic() - started
        # Keep loading until the store answers again after the failover.
        deadline = time.monotonic() + 30
        while len(ledger.confirmed_charges) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for store in stores:
            store.close()
    print(
        f"\nfailover {took:.1f} s; {len(ledger.confirmed_charges)} confirmed reserve+commit, "
        f"{ledger.errors} refused (StoreError); channel steps confirmed "
        f"{sum(ledger.channel_confirmed.values())}, "
        f"unanswered {sum(ledger.channel_unknown.values())}"
    )
    return setup, ledger, took


def _check_nothing_lost_or_doubled(store: Store, ledger: _Ledger) -> None:
    assert len(ledger.confirmed_charges) > 40, "the load run did too little to show anything"
    # Every charge the store confirmed is on its reservation, once.
    for rid, charged in ledger.confirmed_charges.items():
        assert charged == CHARGE
        record = store.credit_reservation(rid, NOW)
        assert record is not None and record.state == "committed", rid
        assert record.charged == CHARGE
    # The account's totals are the sum of its reservations: nothing charged twice or from thin air.
    charged_total = held_total = 0
    for rid in ledger.attempted:
        record = store.credit_reservation(rid, NOW)
        if record is None:
            continue
        if record.state == "committed":
            charged_total += record.charged
        elif record.state == "held":
            held_total += record.amount
    balance = store.credit_balance(ACCOUNT, NOW)
    assert balance.charged == charged_total
    assert balance.reserved == held_total
    assert balance.topped_up == TOP_UP
    assert balance.available + balance.reserved + balance.charged == TOP_UP
    assert balance.available >= 0
    # Each channel charged one price per step: every confirmed one, at most the unknown ones.
    for channel, confirmed in ledger.channel_confirmed.items():
        state = store.channel_get(channel)
        assert state is not None and state.step is None
        assert state.charged % PRICE == 0
        steps = state.charged // PRICE
        assert confirmed <= steps <= confirmed + ledger.channel_unknown[channel], channel


@pytest.fixture
def own_cluster() -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own: failing its primaries over must not disturb the others."""
    if find_redis_server() is None:
        pytest.skip("redis-server not found")
    with LocalRedisCluster() as cluster:
        yield cluster


def test_cluster_primary_failover_during_a_load_run(own_cluster: LocalRedisCluster) -> None:
    url = _with(own_cluster.url, wait_replicas=1, wait_timeout=2)

    def fail_over() -> None:
        for key in ("a", "b", "c"):  # a slot of each of the three primaries: all fail over
            own_cluster.failover_slot_of(key)

    store, ledger, _ = _load_run(url, fail_over)
    _check_nothing_lost_or_doubled(store, ledger)
    store.close()


def test_sentinel_failover_during_a_load_run(redis_sentinel: LocalRedisSentinel) -> None:
    redis_sentinel.flushall()
    url = _with(redis_sentinel.url, wait_replicas=1, wait_timeout=2)
    old = redis_sentinel.primary()
    store, ledger, _ = _load_run(url, redis_sentinel.failover)
    assert redis_sentinel.primary() is not old
    _check_nothing_lost_or_doubled(store, ledger)
    store.close()


# -- the loss window of an asynchronous failover ----------------------------------------------


@pytest.mark.parametrize("wait", [False, True], ids=["wait-off", "wait-on"])
def test_lossy_failover_loses_exactly_the_unreplicated_writes(
    own_cluster: LocalRedisCluster, wait: bool
) -> None:
    url = own_cluster.url
    if wait:
        url = _with(url, wait_replicas=1, wait_timeout=0.3)
    store = open_store(url)
    store.credit_topup(ACCOUNT, TOP_UP, "ref-before", NOW)
    assert store.credit_reserve(ACCOUNT, HOLD, "before", EXPIRES, NOW)
    assert store.credit_commit("before", CHARGE, NOW) == CHARGE

    tag = "{x402gate:credit}"
    primary = own_cluster.primary_of(tag)
    replica = next(s for s in own_cluster.servers if _replicates(s, primary))
    # Cut the replica off: frozen, and its link to the primary closed, so what the primary
    # accepts from now on reaches no replica.
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        primary.command("CLIENT", "KILL", "TYPE", "replica")
        confirmed_during_cut: list[str] = []
        refused_during_cut: list[str] = []
        for n in range(5):
            rid = f"cut-{n}"
            try:
                assert store.credit_reserve(ACCOUNT, HOLD, rid, EXPIRES, NOW)
                store.credit_commit(rid, CHARGE, NOW)
            except StoreError:
                refused_during_cut.append(rid)
            else:
                confirmed_during_cut.append(rid)
        primary.stop()  # the primary dies with writes no replica has
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    replica.command("CLUSTER", "FAILOVER", "TAKEOVER")
    _wait_for(lambda: own_cluster.primary_of(tag) is replica)

    after = open_store(url)
    # What the replica had is there; what only the dead primary had is gone.
    assert after.credit_reservation("before", NOW) is not None
    lost = [rid for rid in confirmed_during_cut if after.credit_reservation(rid, NOW) is None]
    if wait:
        assert confirmed_during_cut == [] and len(refused_during_cut) == 5
    else:
        assert refused_during_cut == [] and lost == confirmed_during_cut == [
            f"cut-{n}" for n in range(5)
        ]
    balance = after.credit_balance(ACCOUNT, NOW)
    assert balance.charged == CHARGE and balance.topped_up == TOP_UP
    after.close()
    store.close()


def _replicates(server: object, primary: object) -> bool:
    from x402gate.testing.redis_server import RedisServer

    assert isinstance(server, RedisServer) and isinstance(primary, RedisServer)
    if server is primary:
        return False
    info = server.command("INFO", "replication")
    return bool(info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port)


def _wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except RedisServerError:
            pass
        time.sleep(0.1)
    raise AssertionError("timed out")
