"""The PostgreSQL store's connections: a pool per store and process, and its transactions.

Every concern (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`, :mod:`.in_flight`,
:mod:`.channels`) builds on :class:`PostgresConnection`: a write runs in one transaction
through :meth:`PostgresConnection._write`, which first takes the transaction-level advisory
locks that name what it changes (:meth:`PostgresConnection._lock`), a read through
:meth:`PostgresConnection._read`. Driver errors become :class:`~x402gate.errors.StoreError`.

Why advisory locks and not only row locks: most operations may create the row they decide on
(the first claim of a key, the first top-up of an account), and ``SELECT ... FOR UPDATE`` locks
nothing while the row does not exist. ``pg_advisory_xact_lock`` on a hash of the key serialises
every transaction on that key across every connection, whether or not the row is there yet, and
is released by the commit or rollback. Under ``READ COMMITTED`` each statement after the lock
sees every transaction committed before it, so the read-decide-write of each operation runs as
if alone. A hash collision only makes two unrelated keys wait for each other.

A lost connection fails closed: the operation raises :class:`StoreError` (it is not retried:
its transaction may or may not have committed, and each operation is idempotent for its
token, so the caller's retry is the safe one). Pooled connections are not checked before use
(a round trip per operation): one found dead by the operation's ``BEGIN``, before anything was
sent that could change a row, is discarded and the operation runs on another, so the next
operation after the server is back succeeds.
After ``fork()`` the child drops the inherited pool without closing it and opens its own.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ...errors import ConfigurationError, StoreError
from ..base import Store
from ..urls import redact_url
from .schema import check_version, migrate

__all__ = ["PostgresConnection"]

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_LIVE_STORES: weakref.WeakSet[PostgresConnection] = weakref.WeakSet()
# Pools inherited through fork: kept referenced so they are never closed in the child.
_ABANDONED: list[Any] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._drop_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:  # pragma: no cover - the postgres extra and the test group have them
        raise ConfigurationError(
            "the PostgreSQL store needs psycopg 3 and psycopg_pool: "
            "pip install 'x402gate[postgres]'"
        ) from None
    return psycopg, psycopg_pool


class PostgresConnection(Store):
    """The pool, locks and transaction plumbing every part of the PostgreSQL store shares.

    Abstract: :class:`~x402gate.stores.postgres.PostgresStore` is the store to use.
    """

    _PURGE_LIMIT: ClassVar[int] = 1000
    """Expired rows deleted per purge at most, so that no call pays for a large backlog."""

    _PURGE_INTERVAL: ClassVar[float] = 30.0
    """Seconds (of the callers' clock) between purges while there is no backlog."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        migrate: bool = True,
        schema: str | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"PostgreSQL store timeout must be positive, got {timeout!r}")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigurationError(
                f"PostgreSQL store pool sizes must satisfy 0 <= min_size <= max_size and "
                f"max_size >= 1, got {min_size} and {max_size}"
            )
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ConfigurationError(
                f"PostgreSQL store schema must be a plain lower-case identifier, got {schema!r}"
            )
        self.conninfo = conninfo
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = float(timeout)
        self.migrate = migrate
        self._where = redact_url(conninfo)
        self._pool_lock = threading.Lock()
        self._pool: Any = None
        self._next_purge = float("-inf")
        self._next_idem_purge = float("-inf")
        self._next_credit_purge = float("-inf")
        self._next_in_flight_purge = float("-inf")
        _LIVE_STORES.add(self)

    def ping(self) -> None:
        """Connect, create or migrate the tables if needed; :class:`StoreError` if impossible."""
        self._read("ping", lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _write(self, op: str, run: Callable[[Any], T]) -> T:
        """Run ``run(conn)`` in one transaction; driver errors become StoreError.

        A pooled connection is not checked before use (that would cost a round trip per
        operation): a connection found dead by the ``BEGIN`` itself, before anything of the
        operation ran, is dropped and the operation starts over on another one, at most once per
        pooled connection. A connection lost after ``BEGIN`` fails the operation closed.
        """
        psycopg, _ = _driver()
        try:
            pool = self._get_pool()
            for _ in range(self.max_size):
                with pool.connection() as conn:
                    begun = False
                    try:
                        with conn.transaction():
                            begun = True
                            return run(conn)
                    except psycopg.OperationalError:
                        if begun or not conn.broken:
                            raise
                # The pool discards the broken connection as it comes back.
            with pool.connection() as conn, conn.transaction():
                return run(conn)
        except psycopg.Error as exc:
            raise self._error(op, exc) from exc
        except _pool_errors() as exc:
            raise self._error(op, exc) from exc

    def _read(self, op: str, run: Callable[[Any], T]) -> T:
        """Run ``run(conn)``, one statement, on a pooled connection in autocommit: the statement
        is its own transaction and snapshot, with no ``BEGIN`` and ``COMMIT`` round trips."""
        psycopg, _ = _driver()
        try:
            pool = self._get_pool()
            for _ in range(self.max_size):
                with pool.connection() as conn:
                    try:
                        return run(conn)
                    except psycopg.OperationalError:
                        if not conn.broken:
                            raise
                # A read changes nothing: after a dead connection it is asked again.
            with pool.connection() as conn:
                return run(conn)
        except psycopg.Error as exc:
            raise self._error(op, exc) from exc
        except _pool_errors() as exc:
            raise self._error(op, exc) from exc

    def _lock(self, conn: Any, kind: str, *names: str) -> None:
        """Take the advisory lock of each ``kind:name`` until the transaction ends.

        Callers lock in one order per operation family (see each module), so two operations
        never wait on each other's locks in opposite orders.
        """
        for name in names:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"{self.schema or ''}:{kind}:{name}",),
            )

    def _purge_after(self, deleted: int, now: float) -> float:
        """When to purge next: at once after a full batch (a backlog), else after a while."""
        return now if deleted >= self._PURGE_LIMIT else now + self._PURGE_INTERVAL

    def _get_pool(self) -> Any:
        with self._pool_lock:
            if self._pool is None:
                self._pool = self._open_pool()
            return self._pool

    def _open_pool(self) -> Any:
        _, psycopg_pool = _driver()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(self.timeout)),
        }
        # Session settings of every pooled connection: a lock held by a stuck transaction fails
        # an operation closed after ``timeout`` (lock_timeout) instead of hanging the request,
        # and the server ends a transaction left idle by a vanished client (after a minute).
        settings = [
            f"SET lock_timeout = {round(self.timeout * 1000)}",
            "SET idle_in_transaction_session_timeout = 60000",
        ]
        if self.schema is not None:
            settings.append(f'SET search_path TO "{self.schema}"')

        def configure(conn: Any) -> None:
            for statement in settings:
                conn.execute(statement)

        pool = psycopg_pool.ConnectionPool(
            self.conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.timeout,
            kwargs=kwargs,
            configure=configure,
            open=False,
            name="x402gate",
        )
        try:
            pool.open(wait=False)
            with pool.connection() as conn:
                if self.migrate:
                    migrate(conn, self._where, self.schema)
                else:
                    check_version(conn, self._where)
        except BaseException:
            pool.close()
            raise
        return pool

    def _drop_after_fork(self) -> None:
        # Runs in the child right after fork(): the pool's threads do not exist here, and its
        # connections belong to the parent.
        self._pool_lock = threading.Lock()
        if self._pool is not None:
            _ABANDONED.append(self._pool)
            self._pool = None

    def _error(self, op: str, exc: BaseException) -> StoreError:
        code = getattr(getattr(exc, "diag", None), "sqlstate", None)
        detail = f"{exc} (SQLSTATE {code})" if code else str(exc) or type(exc).__name__
        return StoreError(f"PostgreSQL store {self._where}: {op} failed: {detail}")


def _pool_errors() -> tuple[type[BaseException], ...]:
    _, psycopg_pool = _driver()
    return (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)
