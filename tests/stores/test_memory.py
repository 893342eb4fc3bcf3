"""The memory backend: private to its instance, and forgetting expired entries as it goes."""

from __future__ import annotations

from x402gate.stores import ClaimResult
from x402gate.stores import memory as memory_backend
from x402gate.stores.memory import MemoryStore

NOW = 1_700_000_000.0
EXP = 1_700_000_300


def test_each_memory_store_is_private() -> None:
    a, b = MemoryStore(), MemoryStore()
    a.claim("k", "GET /a", "t1", EXP, NOW)
    # This is why memory:// is wrong for several worker processes.
    assert b.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.CLAIMED


def test_expired_entries_are_forgotten_a_few_per_claim() -> None:
    store = MemoryStore()
    for i in range(100):
        store.claim(f"old{i}", "GET /a", "t", int(NOW) + 1, NOW)
    assert len(store) == 100
    later = NOW + 2
    store.claim("new0", "GET /a", "t", EXP, later)
    batch = memory_backend._PURGE_BATCH
    assert len(store) == 100 - batch + 1  # bounded work per call
    for i in range(1, 100 // batch + 1):
        store.claim(f"new{i}", "GET /a", "t", EXP, later)
    assert len(store) == 100 // batch + 1  # only the live entries are left


def test_a_reclaimed_entry_is_not_forgotten_at_its_first_expiry() -> None:
    store = MemoryStore()
    store.claim("k", "GET /a", "t1", int(NOW) + 1, NOW)
    store.release("k", "t1")
    store.claim("k", "GET /a", "t2", EXP, NOW)  # extends the entry's life
    for i in range(20):
        store.claim(f"other{i}", "GET /a", "t", EXP, NOW + 2)
    assert store.state("k", NOW + 2) == "held"
    assert store.mark_used("k", "t2") is True


def test_the_memory_journal_stays_within_its_rows_plus_a_64th() -> None:
    from x402gate.stores.journal import JournalRetention, JournalRow

    store = MemoryStore()
    store.journal_retention = JournalRetention(days=None, rows=640)
    start = 1_700_000_000.0
    most = 0
    for n in range(2_000):
        store.journal_append(
            JournalRow(f"r{n:05}", start + n, "GET /a", "0xp", 1, "0xa", "n", "settled")
        )
        most = max(most, len(store.journal_rows()))
    assert most == 640 + 10  # appends prune in batches of a 64th, never beyond
    store.journal_prune(start + 2_000)  # a prune keeps exactly what retention says
    assert [r.id for r in store.journal_rows()] == [f"r{n:05}" for n in range(1_360, 2_000)]
