"""The SQLite backend: the file it leaves, purging, and failures turned into StoreError."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from x402gate.errors import StoreError
from x402gate.stores import ClaimResult, open_store
from x402gate.stores import sqlite as sqlite_backend
from x402gate.stores.sqlite import SQLiteStore

NOW = 1_700_000_000.0
EXP = 1_700_000_300


def rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        count: int = conn.execute("SELECT count(*) FROM x402gate_replay").fetchone()[0]
    return count


def test_claims_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/claims.db"
    with open_store(url) as store:
        store.claim("held", "GET /a", "t1", EXP, NOW)
        store.claim("used", "GET /a", "t2", EXP, NOW)
        store.mark_used("used", "t2")
    with open_store(url) as store:
        assert store.claim("held", "GET /a", "t3", EXP, NOW) is ClaimResult.IN_FLIGHT
        assert store.claim("used", "GET /a", "t3", EXP, NOW) is ClaimResult.USED
        assert store.release("held", "t1") is True


def test_two_stores_on_one_file_share_claims(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/claims.db"
    with open_store(url) as a, open_store(url) as b:
        assert a.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert b.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.IN_FLIGHT
        assert b.mark_used("k", "t1") is True
        assert a.state("k", NOW) == "used"


def test_the_file_is_a_wal_database_with_versioned_tables(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "claims.db") as store:
        store.ping()
    with closing(sqlite3.connect(tmp_path / "claims.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = conn.execute("SELECT value FROM x402gate_meta WHERE name='schema_version'")
        assert version.fetchone() == (str(sqlite_backend.SCHEMA_VERSION),)
    # One table per concern, all under the x402gate_ prefix so the file can be shared.
    assert {"x402gate_meta", "x402gate_replay"} <= tables
    assert all(name.startswith("x402gate_") for name in tables)


def test_expired_rows_are_purged_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SQLiteStore, "_PURGE_LIMIT", 10)
    path = tmp_path / "claims.db"
    with SQLiteStore(path) as store:
        for i in range(35):
            store.claim(f"old{i}", "GET /a", "t", int(NOW) + 1, NOW)
        store.claim("live", "GET /a", "t", EXP, NOW)
        assert rows(path) == 36
        later = NOW + 60
        store.claim("new0", "GET /a", "t", EXP, later)
        assert rows(path) == 36 - 10 + 1  # one batch, not the whole backlog
        for i in range(1, 4):
            store.claim(f"new{i}", "GET /a", "t", EXP, later)
        assert rows(path) == 1 + 4  # the backlog is gone; live entries stay
        assert store.state("live", later) == "held"


def test_a_path_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path}/file/claims.db")
    with pytest.raises(StoreError, match=r"claims\.db: the directory .*/file is not a directory"):
        store.ping()
    with pytest.raises(StoreError, match="claim failed"):
        store.claim("k", "GET /a", "t1", EXP, NOW)
    with pytest.raises(StoreError, match="state failed"):
        store.state("k", NOW)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "claims.db").write_bytes(b"this is not sqlite\n" * 100)
    with (
        SQLiteStore(tmp_path / "claims.db") as store,
        pytest.raises(StoreError, match="not a database"),
    ):
        store.claim("k", "GET /a", "t1", EXP, NOW)


def test_a_locked_database_is_a_store_error_after_the_timeout_then_recovers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/claims.db?timeout=0.2"
    store = open_store(url)
    store.ping()
    blocker = sqlite3.connect(tmp_path / "claims.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    started = time.monotonic()
    with pytest.raises(StoreError, match="locked"):
        store.claim("k", "GET /a", "t1", EXP, NOW)
    assert 0.15 < time.monotonic() - started < 5
    blocker.execute("COMMIT")
    blocker.close()
    assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
    store.close()


def test_a_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "claims.db") as store:
        store.ping()
    with closing(sqlite3.connect(tmp_path / "claims.db")) as conn, conn:
        conn.execute("UPDATE x402gate_meta SET value = '99' WHERE name = 'schema_version'")
    with SQLiteStore(tmp_path / "claims.db") as store, pytest.raises(StoreError, match="newer"):
        store.claim("k", "GET /a", "t1", EXP, NOW)


def test_the_journal_queries_read_an_index_in_order(tmp_path: Path) -> None:
    # The report reads a period in (time, id) order, the payer summary one payer's period:
    # both from an index, never a scan of the journal or a sort of what they read.
    path = tmp_path / "journal.db"
    with SQLiteStore(path) as store:
        store.ping()
    with closing(sqlite3.connect(path)) as conn:

        def plan(sql: str, *args: object) -> str:
            return " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))

        by_time = plan(
            "SELECT id FROM x402gate_journal WHERE time >= ? AND time < ? ORDER BY time, id",
            0,
            1,
        )
        by_payer = plan(
            "SELECT id FROM x402gate_journal WHERE payer = ? AND time >= ? AND time < ?"
            " ORDER BY time, id",
            "0xp",
            0,
            1,
        )
    assert "x402gate_journal_time (time>? AND time<?)" in by_time
    assert "x402gate_journal_payer (payer=? AND time>? AND time<?)" in by_payer
    assert "TEMP B-TREE" not in by_time + by_payer
