"""The SQLite store's connection: one per store and process, its lock, its transactions.

Every backend concern (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`, :mod:`.in_flight`)
builds on :class:`SQLiteConnection`: writes run in one ``BEGIN IMMEDIATE`` transaction through
:meth:`SQLiteConnection._write`, reads through :meth:`SQLiteConnection._read`, and driver errors
become :class:`~x402gate.errors.StoreError`. After ``fork()`` the child drops the inherited
connection without closing it and opens its own on first use; a fork waits until no thread
of the process is inside one of the store's transactions (see ``_before_fork``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, TypeVar

from ...errors import ConfigurationError, StoreError
from ..base import Store
from ..calls import WouldBlock
from .schema import create_tables

__all__ = ["SQLiteConnection"]

T = TypeVar("T")

_SYNCHRONOUS = ("full", "normal")

# Stores whose inherited connection must be dropped in a forked child.
_LIVE_STORES: weakref.WeakSet[SQLiteConnection] = weakref.WeakSet()
# Connections inherited through fork: kept referenced so they are never closed in the child.
_ABANDONED: list[sqlite3.Connection] = []


# Stores whose lock _before_fork took, released again on both sides of the fork.
_HELD_FOR_FORK: list[tuple[SQLiteConnection, bool, bool]] = []
# How long a fork waits for a transaction another thread has under way.
_FORK_WAIT_SECONDS = 10.0


def _before_fork() -> None:
    # A fork in the middle of another thread's transaction would leave the child's copy of
    # SQLite's per-process lock table saying the file is locked by a connection that no thread
    # of the child will ever finish: every new connection of the child then gets SQLITE_BUSY.
    # So the fork waits until no store of this process is inside a transaction.
    # A checkpoint's first pass runs outside the store's lock, on a connection of its own:
    # it is waited for too.
    for store in list(_LIVE_STORES):
        side = store._side_lock.acquire(timeout=_FORK_WAIT_SECONDS)
        main = store._lock.acquire(timeout=_FORK_WAIT_SECONDS)
        _HELD_FOR_FORK.append((store, side, main))


def _after_fork_in_parent() -> None:
    while _HELD_FOR_FORK:
        store, side, main = _HELD_FOR_FORK.pop()
        if main:
            store._lock.release()
        if side:
            store._side_lock.release()


def _after_fork_in_child() -> None:
    _HELD_FOR_FORK.clear()  # each store gets a new lock below
    for store in list(_LIVE_STORES):
        store._drop_after_fork()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

# Per thread: the store whose calls run inline (see SQLiteConnection.inline), and whether
# the current call has committed a transaction already.
_INLINE = threading.local()


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


class SQLiteConnection(Store):
    """The connection, lock and transaction plumbing every part of the SQLite store shares.

    Abstract: :class:`~x402gate.stores.sqlite.SQLiteStore` is the store to use.
    """

    _PURGE_LIMIT: ClassVar[int] = 1000
    """Expired rows deleted per purge at most, so that no call pays for a large backlog."""

    _PURGE_INTERVAL: ClassVar[float] = 30.0
    """Seconds (of the callers' clock) between purges while there is no backlog."""

    _CHECKPOINT_COMMITS: ClassVar[int] = 250
    """Commits between two WAL checkpoints: a ledger step writes about 4 pages, so about as
    often as SQLite's own checkpoint (every 1000 pages), which is off on the store's
    connection because it would ``fsync`` in the committing call."""

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
        self._busy_ms = max(1, round(self.timeout * 1000))
        self._commits = 0
        self._checkpointing = False
        self._level: str | None = None  # the connection's synchronous level now
        self._lock = threading.Lock()
        self._side_lock = threading.Lock()  # a checkpoint's first pass
        self._conn: sqlite3.Connection | None = None
        self._next_purge = float("-inf")
        self._next_idem_purge = float("-inf")
        self._next_credit_purge = float("-inf")
        self._next_in_flight_purge = float("-inf")
        _LIVE_STORES.add(self)

    def ping(self) -> None:
        """Open the file and create the tables if needed; :class:`StoreError` if impossible."""
        if getattr(_INLINE, "store", None) is self:
            raise WouldBlock  # opening and creating wait on the disk: a worker thread's job
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
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._error("close", exc) from exc

    @contextlib.contextmanager
    def inline(self) -> Iterator[None]:
        """This thread's calls on the store run without waiting or raise :class:`WouldBlock`
        (see :meth:`_take_lock`): the async gate's path for ledger and channel steps."""
        previous = getattr(_INLINE, "store", None)
        _INLINE.store, _INLINE.committed = self, False
        try:
            yield
        finally:
            _INLINE.store = previous

    def _take_lock(self, needs_io: bool) -> bool:
        """Take the store's lock; True when this transaction runs inline, without waiting.

        Inside :meth:`inline`, a transaction that would ``fsync`` (``needs_io``), find the lock
        held by another thread or the connection not yet open raises :class:`WouldBlock`, as
        long as nothing of this call is committed yet; after that the call goes on waiting,
        since running it again elsewhere would repeat what is done.
        """
        if getattr(_INLINE, "store", None) is self and not _INLINE.committed:
            if needs_io:
                raise WouldBlock
            if not self._lock.acquire(blocking=False):
                raise WouldBlock(busy=True)  # another thread's transaction: soon over
            if self._conn is not None:
                return True
            self._lock.release()
            raise WouldBlock
        self._lock.acquire()
        return False

    def _write(
        self, op: str, run: Callable[[sqlite3.Connection], T], synchronous: str | None = None
    ) -> T:
        """Run ``run`` in one ``BEGIN IMMEDIATE`` transaction; driver errors become StoreError.

        ``synchronous`` commits this one transaction with another sync level than the store's.
        Inline (:meth:`inline`) only at ``normal``, which in WAL mode commits without
        ``fsync``; another process's write lock then answers at once (``busy_timeout`` 0) and
        raises :class:`WouldBlock`, while the worker thread waits up to ``timeout`` for it.
        Every :attr:`_CHECKPOINT_COMMITS` commits, a thread of its own checkpoints the WAL.
        """
        level = synchronous if synchronous is not None else self.synchronous
        inline = self._take_lock(level == "full")
        try:
            conn = self._connection()
            if not inline:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                if level != self._level:  # left as it is afterwards: the next is often alike
                    self._level = None
                    conn.execute(f"PRAGMA synchronous = {level}")
                    self._level = level
                self._begin(conn, inline)
                try:
                    result = run(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self._committed(inline)
            finally:
                if not inline:
                    conn.execute("PRAGMA busy_timeout = 0")
            return result
        except sqlite3.Error as exc:
            # The connection may be in any state now (I/O error, failed rollback): start
            # afresh next time rather than reason about it.
            self._discard()
            raise self._error(op, exc) from exc
        finally:
            self._lock.release()

    def _write_changes(
        self, op: str, sql: str, args: tuple[object, ...], synchronous: str | None = None
    ) -> bool:
        """One ``UPDATE`` as a transaction of its own; True when it changed a row.

        What :meth:`_write` does for a transaction of one statement, in one call to SQLite
        instead of three (no ``BEGIN IMMEDIATE`` and ``COMMIT`` of their own): an autocommit
        statement takes the write lock when it starts and commits when it is done, so it is as
        atomic and as durable (same ``synchronous`` rule). A statement that fails changes
        nothing; inline, another process's write lock raises :class:`WouldBlock`."""
        level = synchronous if synchronous is not None else self.synchronous
        inline = self._take_lock(level == "full")
        try:
            conn = self._connection()
            if not inline:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                if level != self._level:
                    self._level = None
                    conn.execute(f"PRAGMA synchronous = {level}")
                    self._level = level
                try:
                    changed = conn.execute(sql, args).rowcount > 0
                except sqlite3.OperationalError as exc:
                    if inline and _busy(exc) and not conn.in_transaction:
                        raise WouldBlock from None  # another process writes: wait in a thread
                    raise
                if changed:  # else nothing was written: no commit
                    self._committed(inline)
            finally:
                if not inline:
                    conn.execute("PRAGMA busy_timeout = 0")
            return changed
        except sqlite3.Error as exc:
            self._discard()
            raise self._error(op, exc) from exc
        finally:
            self._lock.release()

    def _committed(self, inline: bool) -> None:
        """Count a commit; every :attr:`_CHECKPOINT_COMMITS`, checkpoint in a thread."""
        if inline:
            _INLINE.committed = True
        self._commits += 1
        if self._commits >= self._CHECKPOINT_COMMITS and not self._checkpointing:
            self._commits, self._checkpointing = 0, True
            threading.Thread(
                target=self._checkpoint, name="x402gate-sqlite-checkpoint", daemon=True
            ).start()

    @staticmethod
    def _begin(conn: sqlite3.Connection, inline: bool) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if inline and _busy(exc):
                raise WouldBlock from None  # another process writes: wait in a thread
            raise

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file, in a thread of its own (``PASSIVE``: it waits
        for no reader), so that no call on the event loop waits for its ``fsync``.

        Two passes. The first, on a connection of its own and without the store's lock, copies
        the WAL as it is and waits for the disk while calls go on. The second holds the store's
        lock (with writes of this process going on, a checkpoint could never copy the whole
        WAL, and SQLite starts a WAL over only after that) and copies only the few frames
        written meanwhile, so calls wait for it briefly. A failure leaves the WAL to the next
        checkpoint."""
        try:
            with self._side_lock, contextlib.suppress(sqlite3.Error, ValueError, OSError):
                # On failure the second pass copies it all.
                # mode=rw: a store closed and removed meanwhile is not created again here.
                uri = Path(self.path).resolve().as_uri() + "?mode=rw"
                side = sqlite3.connect(uri, uri=True, isolation_level=None)
                try:
                    side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    side.close()
            with self._lock:
                if self._conn is not None:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            self._checkpointing = False

    def _read(self, op: str, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``run`` outside a transaction: one SELECT is a consistent snapshot on its own,
        and taking the write lock would only make readers queue behind writers."""
        inline = self._take_lock(False)
        try:
            conn = self._connection()
            if inline:
                try:
                    return run(conn)
                except sqlite3.OperationalError as exc:
                    if _busy(exc):
                        raise WouldBlock from None
                    raise
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                return run(conn)
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            self._discard()
            raise self._error(op, exc) from exc
        finally:
            self._lock.release()

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
                self._level = self.synchronous
                create_tables(conn, self.path)
                # Between calls the connection never waits: the worker thread's calls set
                # the timeout for themselves. SQLite's own checkpoint would fsync in the
                # committing call; _write starts one in a thread of its own instead.
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
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
                if not _busy(exc) or time.monotonic() + delay > deadline:
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
        self._side_lock = threading.Lock()
        self._checkpointing = False  # a checkpoint thread of the parent does not exist here
        if self._conn is not None:
            _ABANDONED.append(self._conn)
            self._conn = None

    def _error(self, op: str, exc: sqlite3.Error) -> StoreError:
        # The extended code (SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_FSYNC, ...) says what to fix.
        code = getattr(exc, "sqlite_errorname", None)
        detail = f"{exc} ({code})" if code else str(exc)
        return StoreError(f"SQLite store {self.path}: {op} failed: {detail}")
