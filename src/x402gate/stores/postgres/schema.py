"""The tables of the PostgreSQL store, their version and the migrations between versions.

Each concern gets its own table, as in the SQLite store (``x402gate_replay``,
``x402gate_recovery``, ``x402gate_answering``, ``x402gate_idempotency``, ``x402gate_credit_*``,
``x402gate_in_flight``, ``x402gate_channel``, ``x402gate_journal``); ``x402gate_meta`` records
the schema version.
Money is ``NUMERIC(78, 0)``: exact, and wide enough for any ``uint256``.

:data:`MIGRATIONS` lists, per version, the statements that bring a database of the version
before it to that version. :func:`migrate` applies the missing ones in one transaction under a
transaction-level advisory lock, so that several processes opening one database at once migrate
it exactly once; a database written by a newer x402gate is refused. :func:`schema_statements`
gives the same statements to a tool that owns the schema itself (a Django migration's
``RunSQL``, see the stores documentation); the store then only checks the version.
"""

from __future__ import annotations

from typing import Any

from ...errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_version", "migrate", "schema_statements"]

# Version 1: every table of the first PostgreSQL store.
_V1 = (
    """CREATE TABLE IF NOT EXISTS x402gate_replay (
        key TEXT PRIMARY KEY,
        resource TEXT NOT NULL,
        token TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'released', 'used')),
        expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS x402gate_replay_expires_at ON x402gate_replay (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_recovery (
        key TEXT PRIMARY KEY,
        checked_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS x402gate_recovery_expires_at ON x402gate_recovery (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_answering (
        key TEXT PRIMARY KEY,
        alive_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS x402gate_answering_expires_at ON x402gate_answering (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_idempotency (
        id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        response BYTEA,
        ttl_seconds BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS x402gate_idempotency_expires_at"
    " ON x402gate_idempotency (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_credit_account (
        account TEXT PRIMARY KEY,
        available NUMERIC(78, 0) NOT NULL CHECK (available >= 0),
        reserved NUMERIC(78, 0) NOT NULL CHECK (reserved >= 0),
        topped_up NUMERIC(78, 0) NOT NULL CHECK (topped_up >= 0),
        charged NUMERIC(78, 0) NOT NULL CHECK (charged >= 0))""",
    """CREATE TABLE IF NOT EXISTS x402gate_credit_topup (
        ref TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        amount NUMERIC(78, 0) NOT NULL,
        applied_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS x402gate_credit_reservation (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        amount NUMERIC(78, 0) NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
        charged NUMERIC(78, 0) NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS x402gate_credit_held"
    " ON x402gate_credit_reservation (account, expires_at) WHERE state = 'held'",
    "CREATE INDEX IF NOT EXISTS x402gate_credit_expires_at"
    " ON x402gate_credit_reservation (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_in_flight (
        account TEXT NOT NULL,
        id TEXT NOT NULL,
        amount NUMERIC(78, 0) NOT NULL,
        until_block BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account, id))""",
    "CREATE INDEX IF NOT EXISTS x402gate_in_flight_expires_at ON x402gate_in_flight (expires_at)",
    """CREATE TABLE IF NOT EXISTS x402gate_channel (
        id TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        balance NUMERIC(78, 0) NOT NULL,
        total_claimed NUMERIC(78, 0) NOT NULL,
        charged NUMERIC(78, 0) NOT NULL,
        earned NUMERIC(78, 0) NOT NULL,
        max_claimable NUMERIC(78, 0) NOT NULL,
        signature TEXT NOT NULL,
        withdraw_requested_at NUMERIC(78, 0) NOT NULL,
        refund_nonce NUMERIC(78, 0) NOT NULL,
        synced_at DOUBLE PRECISION NOT NULL,
        last_request_at DOUBLE PRECISION NOT NULL,
        unclaimed BOOLEAN NOT NULL,
        step_token TEXT,
        step_base NUMERIC(78, 0),
        step_max_claimable NUMERIC(78, 0),
        step_signature TEXT,
        step_expires_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS x402gate_channel_unclaimed"
    " ON x402gate_channel (last_request_at, id) WHERE unclaimed",
)

# Version 2: leases of background jobs (the channel claimer) and the payments journal.
_V2 = (
    """CREATE TABLE IF NOT EXISTS x402gate_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS x402gate_journal (
        id TEXT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        route TEXT NOT NULL,
        payer TEXT NOT NULL,
        amount NUMERIC(78, 0) NOT NULL,
        asset TEXT NOT NULL,
        network TEXT NOT NULL,
        outcome TEXT NOT NULL,
        tx TEXT NOT NULL,
        latency DOUBLE PRECISION,
        scheme TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS x402gate_journal_time ON x402gate_journal (time, id)",
    "CREATE INDEX IF NOT EXISTS x402gate_journal_payer ON x402gate_journal (payer, time)",
)

# Version 3: the webhook outbox.
_V3 = (
    """CREATE TABLE IF NOT EXISTS x402gate_outbox (
        endpoint TEXT NOT NULL,
        event TEXT NOT NULL,
        due DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        dead BOOLEAN NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (endpoint, event))""",
    "CREATE INDEX IF NOT EXISTS x402gate_outbox_due ON x402gate_outbox (dead, due)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3}
"""Statements per version: ``MIGRATIONS[n]`` takes a database at version ``n - 1`` (0: empty)
to version ``n``. A released version's statements never change; a change is a new version."""

SCHEMA_VERSION = max(MIGRATIONS)
"""The version this x402gate writes into ``x402gate_meta``; a newer database is refused."""

_META = "CREATE TABLE IF NOT EXISTS x402gate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

# One fixed key for the migration lock: every x402gate process agrees on it.
_MIGRATION_LOCK = 0x78343032_67617465  # "x402gate"


def schema_statements(from_version: int = 0) -> list[str]:
    """The SQL taking a database at ``from_version`` (0: empty) to :data:`SCHEMA_VERSION`,
    version row included: what a Django migration runs with ``RunSQL`` to own the schema."""
    statements = [_META]
    for version in sorted(MIGRATIONS):
        if version > from_version:
            statements.extend(MIGRATIONS[version])
    statements.append(
        "INSERT INTO x402gate_meta (name, value) VALUES ('schema_version', "
        f"'{SCHEMA_VERSION}') ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
    )
    return statements


def _stored_version(conn: Any) -> int | None:
    row = conn.execute("SELECT value FROM x402gate_meta WHERE name = 'schema_version'").fetchone()
    return None if row is None else int(row[0])


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL store {where}: schema version {version} was written by a newer "
            f"x402gate (this one knows version {SCHEMA_VERSION})"
        )


def migrate(conn: Any, where: str, schema: str | None = None) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction; answer the version
    found before (0 for an empty database).

    ``conn`` is a psycopg connection outside a transaction; ``where`` names the database in
    errors; ``schema`` (a checked identifier) is created first when given. Raises
    :class:`~x402gate.errors.StoreError` for a database written by a newer x402gate, and lets
    driver errors through for the caller to wrap.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        if schema is not None:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(_META)
        found = _stored_version(conn) or 0
        _refuse_newer(found, where)
        if found == SCHEMA_VERSION:
            return found
        for statement in schema_statements(found):
            conn.execute(statement)
        return found


def check_version(conn: Any, where: str) -> None:
    """Check, without changing anything, that the schema is at :data:`SCHEMA_VERSION` (for a
    store told that something else owns the schema)."""
    exists = conn.execute("SELECT to_regclass('x402gate_meta')").fetchone()
    version = _stored_version(conn) if exists and exists[0] is not None else None
    if version is None:
        raise StoreError(
            f"PostgreSQL store {where}: the x402gate tables do not exist (migrate=false: "
            "create them with x402gate.stores.postgres.schema_statements())"
        )
    _refuse_newer(version, where)
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL store {where}: schema version {version} is older than this "
            f"x402gate's {SCHEMA_VERSION} (migrate=false: apply schema_statements({version}))"
        )
