"""The webhook outbox, on every backend: a journal row queues one outbox row per endpoint that
takes its outcome, in the same write as the row (the commits' ``journal=`` rows too); rows are
paged by due time, retried, delivered or buried, and the dead rows stay listable."""

from __future__ import annotations

from x402gate.stores import Store
from x402gate.stores.journal import JournalRetention
from x402gate.stores.outbox import OutboxTarget

from ._channel_race import CHANNEL, NOW, PRICE
from .test_channels import begin, sync
from .test_journal import ACCOUNT, row

MONEY = frozenset({"settled", "charged", "channel_charge"})


def targets(store: Store) -> None:
    store.outbox_targets = (
        OutboxTarget("books", MONEY),
        OutboxTarget("alerts", frozenset({"refused"})),
    )


def test_rows_are_queued_per_endpoint_with_their_journal_row(store: Store) -> None:
    assert store.supports_outbox
    targets(store)
    assert store.journal_append(row("s1", NOW + 1))
    assert store.journal_append(row("r1", NOW + 2, outcome="refused", detail="x"))
    assert store.journal_append(row("f1", NOW + 3, outcome="refunded"))  # no endpoint takes it
    assert not store.journal_append(row("s1", NOW + 9))  # known id: nothing queued again
    assert store.outbox_pending() == 2
    due = store.outbox_due(NOW + 10, 10)
    assert [(e.endpoint, e.event, e.attempts) for e in due] == [
        ("books", "s1", 0),
        ("alerts", "r1", 0),
    ]
    assert due[0].row == row("s1", NOW + 1) and due[0].created == NOW + 1
    assert store.outbox_due(NOW + 1.5, 10)[0].event == "s1"  # r1 is not due before its time
    assert len(store.outbox_due(NOW + 10, 1)) == 1  # a page


def test_commits_queue_their_rows_in_the_same_write(store: Store) -> None:
    targets(store)
    assert store.claim("k1", "GET /a", "t1", int(NOW) + 60, NOW).name == "CLAIMED"
    assert not store.mark_used("k1", "other", journal=row("m0"))  # not committed: not queued
    assert store.mark_used("k1", "t1", NOW, journal=row("m1"))
    store.credit_topup(ACCOUNT, 10_000, "tx1", NOW)
    assert store.credit_reserve(ACCOUNT, 4_000, "res1", NOW + 60, NOW)
    store.credit_commit("res1", 3_000, NOW + 1, journal=row("c1", NOW + 1, outcome="charged"))
    sync(store)
    assert begin(store, "t1", 0).state is not None
    store.channel_commit(
        CHANNEL, "t1", PRICE, NOW + 2, journal=row("h1", NOW + 2, outcome="channel_charge")
    )
    due = store.outbox_due(NOW + 10, 10)
    assert [e.event for e in due] == ["m1", "c1", "h1"]
    assert [e.row.amount for e in due if e.row] == [1000, 3_000, PRICE]


def test_retry_done_and_dead(store: Store) -> None:
    targets(store)
    for i in range(3):
        store.journal_append(row(f"s{i}", NOW + i))
    store.outbox_retry("books", "s0", NOW + 100, "HTTP 500")
    store.outbox_retry("books", "s0", NOW + 200, "ConnectError")
    assert [e.event for e in store.outbox_due(NOW + 50, 10)] == ["s1", "s2"]
    later = store.outbox_due(NOW + 300, 10)
    assert (later[-1].event, later[-1].attempts, later[-1].error) == ("s0", 2, "ConnectError")
    store.outbox_done("books", "s1")
    store.outbox_dead("books", "s0", NOW + 300, "HTTP 500")
    store.outbox_retry("books", "s0", NOW + 400, "late")  # a dead row is not revived
    assert [e.event for e in store.outbox_due(NOW + 1000, 10)] == ["s2"]
    assert store.outbox_pending() == 1
    dead = store.outbox_dead_rows()
    assert [(e.event, e.attempts, e.error, e.due) for e in dead] == [
        ("s0", 2, "HTTP 500", NOW + 300)
    ]
    assert dead[0].row is not None and dead[0].row.id == "s0"


def test_a_store_without_targets_queues_nothing(store: Store) -> None:
    store.journal_append(row("s1"))
    assert store.outbox_pending() == 0
    assert store.outbox_due(NOW + 10, 10) == []


def test_a_pruned_journal_row_is_reported_missing(store: Store) -> None:
    targets(store)
    store.journal_append(row("s1", NOW))
    store.journal_retention = JournalRetention(days=1, rows=None)
    store.journal_prune(NOW + 2 * 86400)
    (entry,) = store.outbox_due(NOW + 2 * 86400, 10)
    assert entry.event == "s1" and entry.row is None


def test_webhooks_are_refused_on_a_cluster(redis_cluster_url: str) -> None:
    import pytest
    from eth_account import Account

    from x402gate import PaymentGate
    from x402gate.assets import Asset
    from x402gate.errors import ConfigurationError

    class Unused:  # no payment is made here
        async def verify(self, *args: object) -> None: ...
        async def settle(self, *args: object) -> None: ...
        async def supported(self) -> None: ...

    asset = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
    with pytest.raises(ConfigurationError, match="Redis Cluster"):
        PaymentGate(
            pay_to=Account.create().address,
            assets=asset,
            facilitator=Unused(),  # type: ignore[arg-type]
            store=redis_cluster_url,
            webhooks=[{"url": "https://hooks.example/x", "secret": "s" * 32}],
        )
