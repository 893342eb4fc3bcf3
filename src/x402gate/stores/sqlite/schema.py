"""The tables of the SQLite store and their version, created on a connection's first use.

Each concern gets its own table (``x402gate_replay``, ``x402gate_idempotency``,
``x402gate_credit_*``, ``x402gate_in_flight``,
``x402gate_channel``, ``x402gate_journal``) and ``x402gate_meta`` records the schema version.
Adding a table is not a new version: tables are created when missing, and an older x402gate
ignores tables it does not know, so old and new workers can share one file during a rolling
upgrade. Nor is adding a column that may hold NULL (:data:`COLUMNS`): it is added to an older
file's table when missing, its existing rows filled in, and an older x402gate, which names the
columns it reads and writes, leaves it NULL (the code says how a NULL reads). Nor is the
journal's new key: ``x402gate_journal`` was first keyed by ``id``, with an index on ``(time,
id)``; it is keyed by ``(time, id)`` now, with a unique index on ``id`` (each insert lands at the
table's end and touches one tree fewer), and an older file's journal is rebuilt so on its first
opening. An older x402gate reads and writes that table as it did (it names its columns, and the
unique index keeps ids unique). A file written by a newer version is refused.
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
    id TEXT NOT NULL,
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
    detail TEXT NOT NULL,
    PRIMARY KEY (time, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS x402gate_journal_id ON x402gate_journal (id);
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


_JOURNAL_COLUMNS = (
    "id, time, route, payer, amount, asset, network, outcome, tx, latency, scheme, detail"
)


def _journal_keyed_by_id(conn: sqlite3.Connection) -> bool:
    """Whether the file's journal is the first layout: a table keyed by ``id`` (with an index
    on ``(time, id)``). The current one is keyed by ``(time, id)``, so that rows, appended in
    time order, land at the table's end, with a unique index on ``id``."""
    keys = [str(row[1]) for row in conn.execute("PRAGMA table_info(x402gate_journal)") if row[5]]
    return keys == ["id"]


def _rekey_journal(conn: sqlite3.Connection) -> bool:
    """Set a first-layout journal aside before :data:`SCHEMA` creates the current one (its
    rows are then copied by :func:`_copy_journal`); False when there is nothing to move.

    Every start also drops ``x402gate_journal_time``: an older x402gate sharing the file
    during a rolling upgrade recreates it on its own start, and it is redundant (the table's
    key is that order) and costs every insert."""
    conn.execute("DROP INDEX IF EXISTS x402gate_journal_time")
    if not _journal_keyed_by_id(conn):
        return False
    conn.execute("DROP INDEX IF EXISTS x402gate_journal_payer")
    conn.execute("ALTER TABLE x402gate_journal RENAME TO x402gate_journal_by_id")
    return True


def _copy_journal(conn: sqlite3.Connection) -> None:
    """Move the rows of the journal set aside by :func:`_rekey_journal` into the new table."""
    conn.execute(
        f"INSERT OR IGNORE INTO x402gate_journal ({_JOURNAL_COLUMNS})"
        f" SELECT {_JOURNAL_COLUMNS} FROM x402gate_journal_by_id"
    )
    conn.execute("DROP TABLE x402gate_journal_by_id")


def create_tables(conn: sqlite3.Connection, path: str) -> None:
    """Create the missing tables and check the file's version, in one write transaction.

    ``path`` names the file in errors. Raises :class:`~x402gate.errors.StoreError` for a file
    written by a newer x402gate, and lets driver errors through for the caller to wrap.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        rekeyed = _rekey_journal(conn)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if rekeyed:
            _copy_journal(conn)
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
