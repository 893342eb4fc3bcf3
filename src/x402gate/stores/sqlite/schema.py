"""The tables of the SQLite store and their version, created on a connection's first use.

Each concern gets its own table (``x402gate_replay``, ``x402gate_idempotency``,
``x402gate_credit_*``, ``x402gate_in_flight``,
``x402gate_channel``, ``x402gate_journal``) and ``x402gate_meta`` records the schema version.
Adding a table is not a new version: tables are created when missing, and an older x402gate
ignores tables it does not know, so old and new workers can share one file during a rolling
upgrade. Nor is adding a column that may hold NULL (:data:`COLUMNS`): it is added to an older
file's table when missing, its existing rows filled in, and an older x402gate, which names the
columns it reads and writes, leaves it NULL (the code says how a NULL reads). A file written by a
newer version is refused.
"""

from __future__ import annotations

import sqlite3

from ...errors import StoreError

__all__ = ["COLUMNS", "SCHEMA", "SCHEMA_VERSION", "create_tables"]

SCHEMA_VERSION = 1
"""The version this x402gate writes into ``x402gate_meta``; a newer file is refused."""

# Statements separated by ";"; each is idempotent (IF NOT EXISTS).
SCHEMA = """
CREATE TABLE IF NOT EXISTS x402gate_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS x402gate_replay (
    key TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'released', 'used')),
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_replay_expires_at ON x402gate_replay (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_recovery (
    key TEXT PRIMARY KEY,
    checked_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_recovery_expires_at ON x402gate_recovery (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_answering (
    key TEXT PRIMARY KEY,
    alive_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_answering_expires_at ON x402gate_answering (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_idempotency (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    response BLOB,
    ttl_seconds INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS x402gate_idempotency_expires_at
    ON x402gate_idempotency (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_credit_account (
    account TEXT PRIMARY KEY,
    available TEXT NOT NULL,
    reserved TEXT NOT NULL,
    topped_up TEXT NOT NULL,
    charged TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS x402gate_credit_topup (
    ref TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount TEXT NOT NULL,
    applied_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS x402gate_credit_reservation (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'committed', 'released', 'expired')),
    charged TEXT NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS x402gate_credit_held
    ON x402gate_credit_reservation (account, expires_at) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS x402gate_credit_expires_at
    ON x402gate_credit_reservation (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_in_flight (
    account TEXT NOT NULL,
    id TEXT NOT NULL,
    amount TEXT NOT NULL,
    until_block INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (account, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_in_flight_expires_at ON x402gate_in_flight (expires_at);
CREATE TABLE IF NOT EXISTS x402gate_channel (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    balance TEXT NOT NULL,
    total_claimed TEXT NOT NULL,
    charged TEXT NOT NULL,
    max_claimable TEXT NOT NULL,
    signature TEXT NOT NULL,
    withdraw_requested_at TEXT NOT NULL,
    refund_nonce TEXT NOT NULL,
    synced_at REAL NOT NULL,
    last_request_at REAL NOT NULL,
    unclaimed INTEGER NOT NULL CHECK (unclaimed IN (0, 1)),
    step_token TEXT,
    step_base TEXT,
    step_max_claimable TEXT,
    step_signature TEXT,
    step_expires_at REAL,
    earned TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_channel_unclaimed
    ON x402gate_channel (last_request_at, id) WHERE unclaimed = 1;
CREATE TABLE IF NOT EXISTS x402gate_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS x402gate_journal (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    route TEXT NOT NULL,
    payer TEXT NOT NULL,
    amount TEXT NOT NULL,
    asset TEXT NOT NULL,
    network TEXT NOT NULL,
    outcome TEXT NOT NULL,
    tx TEXT NOT NULL,
    latency REAL,
    scheme TEXT NOT NULL,
    detail TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS x402gate_journal_time ON x402gate_journal (time, id);
CREATE INDEX IF NOT EXISTS x402gate_journal_payer ON x402gate_journal (payer, time);
CREATE TABLE IF NOT EXISTS x402gate_outbox (
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL,
    dead INTEGER NOT NULL CHECK (dead IN (0, 1)),
    error TEXT NOT NULL,
    PRIMARY KEY (endpoint, event)
);
CREATE INDEX IF NOT EXISTS x402gate_outbox_due ON x402gate_outbox (dead, due);
"""

COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    # The channel's earned amount; the rows of a file older than it earned what they charged.
    ("x402gate_channel", "earned", "TEXT", "UPDATE x402gate_channel SET earned = charged"),
)
"""Columns added after their table's first version: table, column, type, and the statement
that fills the existing rows in when the column is added to an older file."""


def _add_columns(conn: sqlite3.Connection) -> None:
    """Add the :data:`COLUMNS` an older file lacks, filling its existing rows in."""
    for table, column, kind, fill in COLUMNS:
        present = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute(fill)


def create_tables(conn: sqlite3.Connection, path: str) -> None:
    """Create the missing tables and check the file's version, in one write transaction.

    ``path`` names the file in errors. Raises :class:`~x402gate.errors.StoreError` for a file
    written by a newer x402gate, and lets driver errors through for the caller to wrap.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        _add_columns(conn)
        row = conn.execute(
            "SELECT value FROM x402gate_meta WHERE name = 'schema_version'"
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO x402gate_meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {path}: schema version {row[0]} was written by a newer "
                f"x402gate (this one knows version {SCHEMA_VERSION})"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
