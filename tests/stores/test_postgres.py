"""The PostgreSQL backend against a real server: URLs, sharing, exact money, lost connections,
the schema's version and its migrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from x402gate.errors import ConfigurationError, StoreError
from x402gate.stores import ClaimResult, credit_account, open_store
from x402gate.stores.postgres import PostgresStore, schema
from x402gate.testing.postgres_server import PostgresServer

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.postgres

Admin = Any  # a psycopg connection (psycopg is imported only when installed)

NOW = 1_700_000_000.0
EXP = 1_700_000_600
ACCOUNT = credit_account("eip155:84532", "0x" + "ab" * 20, "0x" + "cd" * 20)


@pytest.fixture
def admin(postgres_server: PostgresServer) -> Iterator[Admin]:
    """A superuser connection of the test's own, outside any store."""
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        yield conn


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def test_both_schemes_open_the_store_and_the_options_are_parsed() -> None:
    store = open_store(
        "postgres://app:s3cret@db.internal:6432/pay?sslmode=require&pool_min_size=0"
        "&pool_max_size=4&pool_timeout=2.5&schema=x402&migrate=false"
    )
    assert isinstance(store, PostgresStore)
    assert (store.min_size, store.max_size, store.timeout) == (0, 4, 2.5)
    assert (store.schema, store.migrate) == ("x402", False)
    # The store's own options are taken out; libpq's pass through.
    assert store.conninfo == "postgres://app:s3cret@db.internal:6432/pay?sslmode=require"
    assert "s3cret" not in repr(store)
    assert isinstance(open_store("postgresql://localhost/pay"), PostgresStore)


@pytest.mark.parametrize(
    "query",
    [
        "pool_max_size=lots",
        "pool_min_size=5&pool_max_size=2",
        "pool_timeout=0",
        "migrate=maybe",
        "schema=Robert');DROP",
        "schema=a&schema=b",
    ],
)
def test_bad_options_are_configuration_errors_without_the_password(query: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(f"postgresql://app:s3cret@localhost/pay?{query}")
    assert "s3cret" not in str(info.value)


def test_a_url_without_a_host_reaches_the_server_by_its_socket(
    postgres_server: PostgresServer,
) -> None:
    url = (
        f"postgresql:///postgres?host={postgres_server.socket_dir}&port=5432&user=postgres"
        "&schema=hostless"
    )
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    assert store.conninfo.startswith("postgresql:///postgres?host=")
    with store:
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED


def test_two_stores_on_one_database_share_claims(postgres_url: str) -> None:
    with open_store(postgres_url) as a, open_store(postgres_url) as b:
        assert a.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert b.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.IN_FLIGHT
        assert b.mark_used("k", "t1") is True
        assert a.state("k", NOW) == "used"


def test_money_is_exact_up_to_uint256(postgres_url: str, admin: Admin) -> None:
    top = 2**256 - 1
    with open_store(postgres_url) as store:
        assert store.credit_topup(ACCOUNT, top, "0x01", NOW) == top
        assert store.credit_reserve(ACCOUNT, top - 1, "r1", NOW + 30, NOW) is True
        assert store.credit_commit("r1", top - 2, NOW + 1) == top - 2
        balance = store.credit_balance(ACCOUNT, NOW + 2)
        assert (balance.available, balance.charged) == (2, top - 2)
    name = schema_of(postgres_url)
    row = admin.execute(
        f"SELECT available::text, charged::text FROM {name}.x402gate_credit_account"
    ).fetchone()
    assert row == ("2", str(top - 2))  # stored as exact decimals, not floats


def _blocked_backend(admin: Admin, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError("no store operation waited on the lock")


def test_a_connection_lost_mid_operation_fails_closed_then_the_store_recovers(
    postgres_url: str,
    admin: Admin,
) -> None:
    name = schema_of(postgres_url)
    with open_store(postgres_url) as store:
        store.ping()
        errors: list[BaseException] = []

        def claim() -> None:
            try:
                store.claim("k", "GET /a", "t1", EXP, NOW)
            except BaseException as exc:
                errors.append(exc)

        # Hold the key's lock, so that the claim is inside its transaction when its
        # connection is cut.
        with admin.transaction():
            admin.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{name}:replay:k",)
            )
            worker = threading.Thread(target=claim)
            worker.start()
            admin.execute("SELECT pg_terminate_backend(%s)", (_blocked_backend(admin),))
            worker.join(30)
        assert len(errors) == 1 and isinstance(errors[0], StoreError), errors
        assert "claim failed" in str(errors[0])
        # Nothing was claimed, and the next operation gets a healthy connection.
        assert store.state("k", NOW) is None
        assert store.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.CLAIMED
        # Every pooled connection cut at once: the pool replaces them before use.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        assert store.claim("k", "GET /a", "t3", EXP, NOW) is ClaimResult.IN_FLIGHT


def test_a_lock_held_by_a_stuck_transaction_fails_the_operation_closed(
    postgres_url: str,
    admin: Admin,
) -> None:
    name = schema_of(postgres_url)
    with open_store(f"{postgres_url}&pool_timeout=0.5") as store:
        store.ping()
        with admin.transaction():
            admin.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{name}:replay:k",)
            )
            started = time.monotonic()
            with pytest.raises(StoreError) as info:
                store.claim("k", "GET /a", "t1", EXP, NOW)
            assert time.monotonic() - started < 5
            assert "lock timeout" in str(info.value)
        # The lock is gone with its transaction: the same claim goes through.
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED


def test_an_unreachable_server_is_a_store_error_within_the_pool_timeout() -> None:
    with PostgresServer() as server:
        url = f"{server.fresh_url()}&pool_timeout=1"
        store = open_store(url)
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.claim("k", "GET /a", "t2", EXP, NOW)
        assert time.monotonic() - started < 10  # fails closed within the pool timeout
        store.close()


def test_a_database_without_the_tables_and_migrate_false_is_refused_until_created(
    postgres_url: str,
    admin: Admin,
) -> None:
    name = schema_of(postgres_url)
    with open_store(f"{postgres_url}&migrate=false") as store, pytest.raises(StoreError) as info:
        store.ping()
    assert "do not exist" in str(info.value)
    # What a Django migration's RunSQL does: the statements of schema_statements().
    admin.execute(f"CREATE SCHEMA {name}")
    with admin.transaction():
        admin.execute(f"SET LOCAL search_path = {name}")
        for statement in schema.schema_statements():
            admin.execute(statement)
    with open_store(f"{postgres_url}&migrate=false") as store:
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED


def test_an_older_schema_is_migrated_once_keeping_its_rows(
    postgres_url: str,
    admin: Admin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = schema_of(postgres_url)
    with open_store(postgres_url) as store:
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
    # The next x402gate adds a column: one version more.
    following = schema.SCHEMA_VERSION + 1
    step = ("ALTER TABLE x402gate_replay ADD COLUMN note TEXT NOT NULL DEFAULT 'v2'",)
    monkeypatch.setattr(schema, "MIGRATIONS", {**schema.MIGRATIONS, following: step})
    monkeypatch.setattr(schema, "SCHEMA_VERSION", following)
    # A database of the version before refuses a store that may not migrate it.
    with open_store(f"{postgres_url}&migrate=false") as store, pytest.raises(StoreError):
        store.ping()
    # Eight stores open at once: one migrates, the others wait for it and find the new version.
    stores = [open_store(postgres_url) for _ in range(8)]
    errors: list[BaseException] = []

    def ping(store: object) -> None:
        try:
            store.ping()  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ping, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert stores[0].claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.IN_FLIGHT  # kept
    for store in stores:
        store.close()
    version = admin.execute(
        f"SELECT value FROM {name}.x402gate_meta WHERE name = 'schema_version'"
    ).fetchone()
    notes = admin.execute(f"SELECT note FROM {name}.x402gate_replay").fetchall()
    assert version == (str(following),) and notes == [("v2",)]


def test_a_schema_from_a_newer_version_is_refused(
    postgres_url: str,
    admin: Admin,
) -> None:
    name = schema_of(postgres_url)
    with open_store(postgres_url) as store:
        store.ping()
    admin.execute(f"UPDATE {name}.x402gate_meta SET value = '99' WHERE name = 'schema_version'")
    with open_store(postgres_url) as store, pytest.raises(StoreError) as info:
        store.claim("k", "GET /a", "t1", EXP, NOW)
    assert "newer" in str(info.value)
