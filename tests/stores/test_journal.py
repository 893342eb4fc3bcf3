"""The payments journal, on every backend: rows written with the commit they record, read back
in time order, never twice, and pruned by retention."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from x402gate.stores import Store
from x402gate.stores.base import MAX_CREDIT_AMOUNT, ClaimResult
from x402gate.stores.journal import JournalRetention, JournalRow

from ._channel_race import CHANNEL, NOW, PRICE
from .conftest import StoreFactory
from .test_channels import begin, sync

ACCOUNT = "eip155:84532|0xusdc|0xpayer"


def row(row_id: str, time: float = NOW, amount: int = 1000, **kw: object) -> JournalRow:
    fields: dict[str, object] = {
        "route": "GET /weather",
        "payer": "0x" + "ab" * 20,
        "asset": "0x" + "cd" * 20,
        "network": "eip155:84532",
        "outcome": "settled",
        "transaction": "0x" + "ef" * 32,
        "latency": 0.25,
        "scheme": "exact",
    }
    fields.update(kw)
    return JournalRow(id=row_id, time=time, amount=amount, **fields)  # type: ignore[arg-type]


def test_rows_are_kept_once_and_read_in_time_order(store: Store) -> None:
    assert store.supports_journal
    assert store.journal_append(row("b", NOW + 2))
    assert store.journal_append(row("a", NOW + 1, amount=MAX_CREDIT_AMOUNT, latency=None))
    assert store.journal_append(row("c", NOW + 2, outcome="refused", detail="invalid_payload"))
    assert not store.journal_append(row("b", NOW + 9, amount=5))  # the same id: kept once
    rows = store.journal_rows()
    assert [r.id for r in rows] == ["a", "b", "c"]
    assert rows[0].amount == MAX_CREDIT_AMOUNT and rows[0].latency is None
    assert rows[1] == row("b", NOW + 2)
    assert rows[2].detail == "invalid_payload"
    assert [r.id for r in store.journal_rows(NOW + 2, NOW + 3)] == ["b", "c"]
    assert [r.id for r in store.journal_rows(NOW, NOW + 2)] == ["a"]
    assert [r.id for r in store.journal_rows(limit=2)] == ["a", "b"]


def test_malformed_rows_are_refused(store: Store) -> None:
    for bad in (row("x", amount=-1), row("x", outcome="paid"), row("", amount=1)):
        with pytest.raises(ValueError):
            store.journal_append(bad)
    assert store.journal_rows() == []


def test_a_settled_claim_writes_its_row_with_it_and_only_then(store: Store) -> None:
    assert store.claim("k1", "GET /a", "t1", int(NOW) + 60, NOW) is ClaimResult.CLAIMED
    # Not this request's claim: nothing is marked, nothing is journaled.
    assert not store.mark_used("k1", "other", journal=row("r0"))
    assert store.mark_used("k1", "t1", NOW, journal=row("r1"))
    assert store.mark_used("k1", "t1", journal=row("r1"))  # a repeat records nothing more
    assert [r.id for r in store.journal_rows()] == ["r1"]
    assert store.state("k1", NOW) == "used"


def test_a_malformed_row_refuses_the_mark_and_leaves_the_claim_as_it_was(store: Store) -> None:
    assert store.claim("k1", "GET /a", "t1", int(NOW) + 60, NOW) is ClaimResult.CLAIMED
    for now in (None, NOW):
        with pytest.raises(ValueError):
            store.mark_used("k1", "t1", now, journal=row("r1", amount=-1))
    assert store.state("k1", NOW) == "held" and store.journal_rows() == []
    assert store.mark_used("k1", "t1", journal=row("r1"))
    assert [r.id for r in store.journal_rows()] == ["r1"]


def test_a_credit_commit_records_what_it_charged(store: Store) -> None:
    store.credit_topup(ACCOUNT, 10_000, "tx1", NOW)
    assert store.credit_reserve(ACCOUNT, 4_000, "res1", NOW + 60, NOW)
    charged = store.credit_commit("res1", 9_999, NOW + 1, journal=row("c1", outcome="charged"))
    assert charged == 4_000
    # The repeated commit answers the same charge and writes no second row.
    again = store.credit_commit("res1", 9_999, NOW + 2, journal=row("c2", outcome="charged"))
    assert again == 4_000
    # A reservation charged nothing leaves no row.
    assert store.credit_reserve(ACCOUNT, 1_000, "res2", NOW + 60, NOW)
    assert store.credit_commit("res2", 0, NOW + 3, journal=row("c3", outcome="charged")) == 0
    rows = store.journal_rows()
    assert [(r.id, r.amount, r.outcome) for r in rows] == [("c1", 4_000, "charged")]


def test_a_channel_commit_records_what_the_seller_earned(store: Store) -> None:
    sync(store)
    assert begin(store, "t1", 0).state is not None
    state = store.channel_commit(
        CHANNEL, "t1", PRICE * 5, NOW + 1, journal=row("h1", outcome="channel_charge")
    )
    assert state is not None and state.earned == PRICE
    # A commit of a step this token no longer holds charges and journals nothing.
    assert store.channel_commit(CHANNEL, "t1", PRICE, NOW + 2, journal=row("h2")) is None
    rows = store.journal_rows()
    assert [(r.id, r.amount, r.outcome) for r in rows] == [("h1", PRICE, "channel_charge")]


def test_a_commit_keeps_what_moved_the_channel_while_its_request_ran(store: Store) -> None:
    sync(store)
    assert begin(store, "t1", 0).outcome is not None
    assert store.channel_commit(CHANNEL, "t1", 50, NOW, step=PRICE) is not None
    assert begin(store, "t2", PRICE).state is not None
    # While t2's request runs: a claim of what was earned, then the chain's figures, which
    # show more claimed (within what was charged, so t2's step stands) and a new balance.
    assert store.channel_mark_claimed(CHANNEL, 50, NOW + 1)
    moved = sync(store, balance=10**9, total_claimed=PRICE - 10, now=NOW + 2)
    assert (moved.earned, moved.step is not None) == (PRICE - 10, True)
    state = store.channel_commit(
        CHANNEL, "t2", 30, NOW + 3, step=PRICE, journal=row("h2", outcome="channel_charge")
    )
    assert state is not None
    assert (state.charged, state.earned, state.total_claimed, state.balance) == (
        2 * PRICE,
        PRICE + 20,
        PRICE - 10,
        10**9,
    )
    assert store.channel_get(CHANNEL) == state
    assert [(c.channel_id, c.earned) for c in store.channel_claimable()] == [(CHANNEL, PRICE + 20)]
    # The row says what this request earned, whatever else moved the channel.
    assert [(r.id, r.amount) for r in store.journal_rows()] == [("h2", 30)]


def test_retention_prunes_by_age_and_by_count(store: Store) -> None:
    store.journal_retention = JournalRetention(days=1, rows=None)
    for i in range(5):
        store.journal_append(row(f"old{i}", NOW + i))
    assert store.journal_prune(NOW + 86400 + 2.5) == 3  # older than a day
    assert [r.id for r in store.journal_rows()] == ["old3", "old4"]
    for i in range(3):
        store.journal_append(row(f"new{i}", NOW + 86400 + 10 + i))
    store.journal_prune(NOW + 86400 + 10)  # appends may have pruned already
    assert [r.id for r in store.journal_rows()] == ["new0", "new1", "new2"]
    store.journal_retention = JournalRetention(days=None, rows=2)
    assert store.journal_prune(NOW + 86400 + 20) == 1
    assert [r.id for r in store.journal_rows()] == ["new1", "new2"]


def test_retention_is_checked() -> None:
    with pytest.raises(Exception, match="positive"):
        JournalRetention(days=0)
    with pytest.raises(Exception, match=">= 1"):
        JournalRetention(rows=0)
    assert dataclasses.replace(JournalRetention(), rows=5).rows == 5


def test_a_claim_records_what_it_adds_to_the_claimed_total(store: Store) -> None:
    sync(store)
    assert begin(store, "t1", 0).state is not None
    assert store.channel_commit(CHANNEL, "t1", PRICE, NOW + 1) is not None
    claim = row("k1", NOW + 2, outcome="claim", route="", transaction="0x" + "12" * 32)
    assert store.channel_mark_claimed(CHANNEL, PRICE - 10, NOW + 2, journal=claim)
    # Claiming up to the same total again adds nothing and writes nothing.
    assert store.channel_mark_claimed(CHANNEL, PRICE - 10, NOW + 3, journal=row("k2"))
    # Beyond what was earned: refused, nothing written.
    assert not store.channel_mark_claimed(CHANNEL, PRICE + 1, NOW + 4, journal=row("k3"))
    assert store.channel_mark_claimed(
        CHANNEL, PRICE, NOW + 5, journal=row("k4", NOW + 5, outcome="claim")
    )
    rows = store.journal_rows()
    assert [(r.id, r.amount) for r in rows] == [("k1", PRICE - 10), ("k4", 10)]


def test_rows_of_one_payer(store: Store) -> None:
    alice, bob = "0x" + "a1" * 20, "0x" + "b0" * 20
    for n in range(6):
        store.journal_append(row(f"p{n}", NOW + n, payer=alice if n % 2 else bob))
    assert [r.id for r in store.journal_rows(payer=alice)] == ["p1", "p3", "p5"]
    assert [r.id for r in store.journal_rows(NOW + 2, payer=bob)] == ["p2", "p4"]
    assert [r.id for r in store.journal_rows(payer=bob, limit=1)] == ["p0"]
    assert store.journal_rows(payer="0x" + "00" * 20) == []


def test_a_backlog_is_pruned_in_batches_to_the_last_row(store: Store) -> None:
    store.journal_retention = JournalRetention(days=None, rows=None)
    for n in range(2_500):
        store.journal_append(row(f"b{n:05}", NOW + n * 0.001))
    store.journal_retention = JournalRetention(days=1, rows=None)
    assert store.journal_prune(NOW + 2 * 86400) == 2_500
    assert store.journal_rows() == []
    for n in range(1_200):
        store.journal_append(row(f"c{n:05}", NOW + n * 0.001))
    store.journal_retention = JournalRetention(days=None, rows=100)
    assert store.journal_prune(NOW + 5) == 1_100
    assert [r.id for r in store.journal_rows()] == [f"c{n:05}" for n in range(1_100, 1_200)]


def test_rows_of_one_time_read_back_by_id_a_page_at_a_time(store: Store) -> None:
    # Enough rows that every shard of a sharded journal is read in several pages.
    ids = [f"t{(n * 7919) % 600:03}" for n in range(600)]  # every id once, out of order
    for row_id in ids:
        store.journal_append(row(row_id, NOW + int(row_id[1:]) % 3, amount=int(row_id[1:])))
    expected = sorted(ids, key=lambda i: (int(i[1:]) % 3, i))
    assert [r.id for r in store.journal_rows()] == expected
    assert [r.id for r in store.journal_rows(limit=250)] == expected[:250]
    between = [r.id for r in store.journal_rows(NOW + 1, NOW + 2, limit=150)]
    assert between == [i for i in expected if int(i[1:]) % 3 == 1][:150]
    assert [r.amount for r in store.journal_rows(limit=3)] == [int(i[1:]) for i in expected[:3]]


def test_hosts_pruning_by_count_at_once_never_delete_too_many(make_handle: StoreFactory) -> None:
    first, second = make_handle(), make_handle()
    for handle in (first, second):
        handle.journal_retention = JournalRetention(days=None, rows=None)
    for n in range(1_500):
        first.journal_append(row(f"r{n:05}", NOW + n * 0.001))
    keep = 50
    newest = [f"r{n:05}" for n in range(1_500 - keep, 1_500)]
    for handle in (first, second):
        handle.journal_retention = JournalRetention(days=None, rows=keep)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def prune(handle: Store) -> None:
        try:
            barrier.wait()
            handle.journal_prune(NOW + 5)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=prune, args=(h,)) for h in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Either may have left a batch for later, but neither deleted a row the count keeps.
    assert [r.id for r in second.journal_rows()][-keep:] == newest
    first.journal_prune(NOW + 5)
    assert [r.id for r in second.journal_rows()] == newest
