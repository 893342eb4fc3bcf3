"""The SQLite store's connection: one per store and process, its lock, its transactions.

Every backend concern (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`, :mod:`.in_flight`)
builds on :class:`SQLiteConnection`: writes run in one ``BEGIN IMMEDIATE`` transaction through
:meth:`SQLiteConnection._write`, reads through :meth:`SQLiteConnection._read`, and driver errors
become :class:`~x402gate.errors.StoreError`. After ``fork()`` the child drops the inherited
connection without closing it and opens its own on first use.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import ClassVar, TypeVar

from ...errors import ConfigurationError, StoreError
from ..base import Store
from .schema import create_tables

__all__ = ["SQLiteConnection"]

T = TypeVar("T")

_SYNCHRONOUS = ("full", "normal")

# Stores whose inherited connection must be dropped in a forked child.
_LIVE_STORES: weakref.WeakSet[SQLiteConnection] = weakref.WeakSet()
# Connections inherited through fork: kept referenced so they are never closed in the child.
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._drop_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLiteConnection(Store):
    """The connection, lock and transaction plumbing every part of the SQLite store shares.

    Abstract: :class:`~x402gate.stores.sqlite.SQLiteStore` is the store to use.
    """

    _PURGE_LIMIT: ClassVar[int] = 1000
    """Expired rows deleted per purge at most, so that no call pays for a large backlog."""

    _PURGE_INTERVAL: ClassVar[float] = 30.0
    """Seconds (of the callers' clock) between purges while there is no backlog."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "full",
        ledger_synchronous: str = "normal",
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
        if ledger_synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SQLite store ledger_synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {ledger_synchronous!r}"
            )
        self.path = os.path.abspath(path)
        self.timeout = float(timeout)
        self.synchronous = synchronous.lower()
        # Never more durable than the store itself: synchronous=normal keeps reservations normal.
        self.ledger_synchronous = (
            "normal" if self.synchronous == "normal" else ledger_synchronous.lower()
        )
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # The connection's PRAGMA synchronous: switched only when a write needs another level,
        # so a run of ledger writes (a channel's steps, credit) costs no PRAGMA statements.
        self._conn_synchronous = ""
        self._next_purge = float("-inf")
        self._next_idem_purge = float("-inf")
        self._next_credit_purge = float("-inf")
        self._next_in_flight_purge = float("-inf")
        _LIVE_STORES.add(self)

    def ping(self) -> None:
        """Open the file and create the tables if needed; :class:`StoreError` if impossible."""
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            # SQLite only says "unable to open database file": name what is wrong.
            what = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise StoreError(f"SQLite store {self.path}: the directory {directory} {what}")
        if not os.path.exists(self.path) and not os.access(directory, os.W_OK):
            raise StoreError(
                f"SQLite store {self.path}: the directory {directory} is not writable, so the "
                "database file cannot be created"
            )
        with self._lock:
            try:
                self._connection().execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("ping", exc) from exc

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._conn_synchronous = ""
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._error("close", exc) from exc

    def _write(
        self, op: str, run: Callable[[sqlite3.Connection], T], synchronous: str | None = None
    ) -> T:
        """Run ``run`` in one ``BEGIN IMMEDIATE`` transaction; driver errors become StoreError.

        ``synchronous`` commits this one transaction with another sync level than the store's.
        """
        level = synchronous or self.synchronous
        with self._lock:
            try:
                conn = self._connection()
                if level != self._conn_synchronous:
                    conn.execute(f"PRAGMA synchronous = {level}")
                    self._conn_synchronous = level
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

    def _read(self, op: str, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``run`` outside a transaction: one SELECT is a consistent snapshot on its own,
        and taking the write lock would only make readers queue behind writers."""
        with self._lock:
            try:
                return run(self._connection())
            except sqlite3.Error as exc:
                self._discard()
                raise self._error(op, exc) from exc

    def _purge_after(self, deleted: int, now: float) -> float:
        """When to purge next: at once after a full batch (a backlog), else after a while."""
        return now if deleted >= self._PURGE_LIMIT else now + self._PURGE_INTERVAL

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._enable_wal(conn)
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                create_tables(conn, self.path)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._conn_synchronous = self.synchronous
        return self._conn

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
        self._conn_synchronous = ""
        if conn is not None:
            # Already failing: the original error is the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _drop_after_fork(self) -> None:
        # Runs in the child right after fork(): the lock may have been held by a thread that
        # does not exist here, and the connection belongs to the parent.
        self._lock = threading.Lock()
        self._conn_synchronous = ""
        if self._conn is not None:
            _ABANDONED.append(self._conn)
            self._conn = None

    def _error(self, op: str, exc: sqlite3.Error) -> StoreError:
        # The extended code (SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_FSYNC, ...) says what to fix.
        code = getattr(exc, "sqlite_errorname", None)
        detail = f"{exc} ({code})" if code else str(exc)
        return StoreError(f"SQLite store {self.path}: {op} failed: {detail}")
