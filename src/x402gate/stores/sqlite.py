"""``sqlite:///path.db``: the embedded default, one file shared by every process on the host.

URLs: ``sqlite:///relative/path.db`` (relative to the working directory when the store is
created), ``sqlite:////absolute/path.db``; query options ``timeout`` (seconds to wait for
another writer, default 5) and ``synchronous`` (``full``, the default, or ``normal``, which
in WAL mode survives a process crash but may lose the last claims on power loss).
``sqlite:///:memory:`` is refused: a private in-memory database would protect nothing across
processes, which is what this backend is for; use ``memory://`` instead.

How it stays correct:

* Every write is one ``BEGIN IMMEDIATE`` transaction. It takes SQLite's write lock before
  reading, so check-and-set cannot interleave with another connection, and it avoids the
  read-then-upgrade of deferred transactions, which fails with ``SQLITE_BUSY`` at once in WAL
  mode instead of waiting ``timeout``.
* WAL journal: readers never block the writer, and a commit is one append.
* One connection per store and process, used under a lock. Threads of one process queue on the
  lock (a fast hand-off) instead of on SQLite's busy handler, which sleeps in steps of
  milliseconds; across processes the busy handler waits up to ``timeout``.
* After ``fork()`` the child drops the inherited connection without closing it (SQLite forbids
  using a connection across fork) and opens its own on first use, so a store created before a
  pre-forking server spawns its workers is safe.
* Each concern gets its own table (``x402gate_replay``, ``x402gate_idempotency``; credit
  tables later) and ``x402gate_meta`` records the schema version. Adding a table is not a new
  version: tables are created when missing, and an older x402gate ignores tables it does not
  know, so old and new workers can share one file during a rolling upgrade.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from typing import ClassVar, TypeVar

from ..errors import ConfigurationError, StoreError
from .base import (
    ClaimResult,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
)
from .registry import register_scheme

__all__ = ["SQLiteStore"]

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
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
"""

# Expired rows deleted per purge at most, so that no claim pays for a large backlog at once.
_PURGE_LIMIT = 1000
# Seconds (of the callers' clock) between purges while there is no backlog.
_PURGE_INTERVAL = 30.0

_SYNCHRONOUS = ("full", "normal")

# Stores whose inherited connection must be dropped in a forked child.
_LIVE_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
# Connections inherited through fork: kept referenced so they are never closed in the child.
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._drop_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@register_scheme
class SQLiteStore(Store):
    """Replay store in a SQLite file (WAL), safe across threads and processes of one host.

    ``path`` is made absolute when the store is created. The file and its tables are created on
    first use (or :meth:`ping`); its directory must exist.
    """

    scheme: ClassVar[str] = "sqlite"
    blocking: ClassVar[bool] = True
    shared_across_processes: ClassVar[bool] = True
    supports_idempotency: ClassVar[bool] = True

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 5.0, synchronous: str = "full"
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ConfigurationError(
                f"SQLite store needs a file path, got {path!r} (use memory:// for a store "
                "inside one process)"
            )
        if not timeout > 0:
            raise ConfigurationError(f"SQLite store timeout must be positive, got {timeout!r}")
        if synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SQLite store synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {synchronous!r}"
            )
        self.path = os.path.abspath(path)
        self.timeout = float(timeout)
        self.synchronous = synchronous.lower()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._next_purge = float("-inf")
        self._next_idem_purge = float("-inf")
        _LIVE_STORES.add(self)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``; ``?timeout=&synchronous=``."""
        try:
            parts = urllib.parse.urlsplit(url)
            query = urllib.parse.parse_qs(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            )
        except ValueError:
            raise ConfigurationError(f"SQLite store URL {url!r} is malformed") from None
        if parts.netloc or not parts.path.startswith("/") or parts.fragment:
            raise ConfigurationError(
                f"SQLite store URL {url!r} is malformed: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        options: dict[str, str] = {}
        for name, values in query.items():
            if name not in ("timeout", "synchronous") or len(values) != 1:
                raise ConfigurationError(
                    f"SQLite store URL {url!r}: unknown or repeated option {name!r} "
                    "(accepted: timeout, synchronous)"
                )
            options[name] = values[0]
        timeout = 5.0
        if "timeout" in options:
            try:
                timeout = float(options["timeout"])
            except ValueError:
                raise ConfigurationError(
                    f"SQLite store URL {url!r}: timeout must be a number of seconds"
                ) from None
        return cls(
            urllib.parse.unquote(parts.path[1:]),
            timeout=timeout,
            synchronous=options.get("synchronous", "full"),
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- replay -----------------------------------------------------------------------------

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        def run(conn: sqlite3.Connection) -> ClaimResult:
            self._purge(conn, now)
            row = conn.execute(
                "SELECT state, resource, expires_at, token FROM x402gate_replay WHERE key = ?",
                (key,),
            ).fetchone()
            if row is not None and now < row[2]:
                if row[0] == "used":
                    return ClaimResult.USED
                if row[1] != resource:
                    return ClaimResult.BOUND_ELSEWHERE
                if row[0] == "held" and row[3] != token:
                    return ClaimResult.IN_FLIGHT
                conn.execute(
                    "UPDATE x402gate_replay SET state = 'held', token = ?,"
                    " expires_at = max(expires_at, ?) WHERE key = ?",
                    (token, expires_at, key),
                )
                return ClaimResult.CLAIMED
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_replay (key, resource, token, state, expires_at)"
                " VALUES (?, ?, ?, 'held', ?)",
                (key, resource, token, expires_at),
            )
            return ClaimResult.CLAIMED

        return self._write("claim", run)

    def release(self, key: str, token: str) -> bool:
        return self._finish("release", key, token, "released")

    def mark_used(self, key: str, token: str) -> bool:
        return self._finish("mark_used", key, token, "used")

    def state(self, key: str, now: float) -> str | None:
        # One SELECT is a consistent snapshot on its own; taking the write lock would only
        # make readers queue behind writers.
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute("SELECT state, expires_at FROM x402gate_replay WHERE key = ?", (key,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("state", exc) from exc
        if row is None or now >= row[1]:
            return None
        state: str = row[0]
        return state

    def _finish(self, op: str, key: str, token: str, new_state: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_replay SET state = ?1"
                " WHERE key = ?2 AND token = ?3 AND state IN ('held', ?1)",
                (new_state, key, token),
            )
            return cursor.rowcount == 1

        return self._write(op, run)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_replay WHERE key IN"
            " (SELECT key FROM x402gate_replay WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_LIMIT),
        ).rowcount
        # A full batch means a backlog: purge again on the next claim, else wait a while.
        self._next_purge = now if deleted >= _PURGE_LIMIT else now + _PURGE_INTERVAL

    # -- idempotency ------------------------------------------------------------------------

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)

        def run(conn: sqlite3.Connection) -> IdempotencyResult:
            self._purge_idem(conn, now)
            row = conn.execute(
                "SELECT fingerprint, state, response, expires_at FROM x402gate_idempotency"
                " WHERE id = ?",
                (payment_id,),
            ).fetchone()
            if row is not None and now < row[3]:
                if row[0] != fingerprint:
                    return IdempotencyResult(IdempotencyOutcome.CONFLICT)
                if row[1] == "done":
                    return IdempotencyResult(IdempotencyOutcome.REPLAY, bytes(row[2]))
                return IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_idempotency"
                " (id, fingerprint, state, response, ttl_seconds, expires_at)"
                " VALUES (?, ?, 'pending', NULL, ?, ?)",
                (payment_id, fingerprint, ttl_seconds, now + ttl_seconds),
            )
            return IdempotencyResult(IdempotencyOutcome.NEW)

        return self._write("idempotency_begin", run)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        data = check_idempotency_response(response)

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT fingerprint, state, expires_at FROM x402gate_idempotency WHERE id = ?",
                (payment_id,),
            ).fetchone()
            if row is None or now >= row[2] or row[0] != fingerprint:
                return False
            if row[1] == "pending":
                conn.execute(
                    "UPDATE x402gate_idempotency SET state = 'done', response = ?,"
                    " expires_at = max(expires_at, ? + ttl_seconds) WHERE id = ?",
                    (data, now, payment_id),
                )
            return True

        return self._write("idempotency_complete", run)

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM x402gate_idempotency"
                " WHERE id = ? AND fingerprint = ? AND state = 'pending'",
                (payment_id, fingerprint),
            )
            return cursor.rowcount == 1

        return self._write("idempotency_abandon", run)

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(
                        "SELECT state, expires_at FROM x402gate_idempotency WHERE id = ?",
                        (payment_id,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("idempotency_state", exc) from exc
        if row is None or now >= row[1]:
            return None
        state: str = row[0]
        return state

    def _purge_idem(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_idem_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_idempotency WHERE id IN"
            " (SELECT id FROM x402gate_idempotency WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_LIMIT),
        ).rowcount
        self._next_idem_purge = now if deleted >= _PURGE_LIMIT else now + _PURGE_INTERVAL

    # -- plumbing ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Open the file and create the tables if needed; :class:`StoreError` if impossible."""
        with self._lock:
            try:
                self._connection().execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("ping", exc) from exc

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._error("close", exc) from exc

    def _write(self, op: str, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``run`` in one ``BEGIN IMMEDIATE`` transaction; driver errors become StoreError."""
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = run(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                # The connection may be in any state now (I/O error, failed rollback): start
                # afresh next time rather than reason about it.
                self._discard()
                raise self._error(op, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        self._enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
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
                    f"SQLite store {self.path}: schema version {row[0]} was written by a newer "
                    f"x402gate (this one knows version {SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at
        # once instead of calling the busy handler while another process creates the same file.
        # So wait here, as the busy handler would; afterwards the mode is stored in the file.
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Already failing: the original error is the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _drop_after_fork(self) -> None:
        # Runs in the child right after fork(): the lock may have been held by a thread that
        # does not exist here, and the connection belongs to the parent.
        self._lock = threading.Lock()
        if self._conn is not None:
            _ABANDONED.append(self._conn)
            self._conn = None

    def _error(self, op: str, exc: sqlite3.Error) -> StoreError:
        # The extended code (SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_FSYNC, ...) says what to fix.
        code = getattr(exc, "sqlite_errorname", None)
        detail = f"{exc} ({code})" if code else str(exc)
        return StoreError(f"SQLite store {self.path}: {op} failed: {detail}")
