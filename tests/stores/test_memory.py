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
