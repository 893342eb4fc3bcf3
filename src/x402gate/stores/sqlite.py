"""``sqlite:///path.db``: the embedded default, one file shared by every process on the host.

Replay claims, idempotency records and the credit ledger live in one file.

URLs: ``sqlite:///relative/path.db`` (relative to the working directory when the store is
created), ``sqlite:////absolute/path.db``; query options ``timeout`` (seconds to wait for
another writer, default 5), ``synchronous`` (``full``, the default, or ``normal``, which
in WAL mode survives a process crash but may lose the last claims on power loss) and
``ledger_synchronous`` (``normal``, the default, or ``full``: how the credit ledger's spending
writes are synced, see below).
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
* Each concern gets its own table (``x402gate_replay``, ``x402gate_idempotency``,
  ``x402gate_credit_*``, ``x402gate_in_flight``) and ``x402gate_meta`` records the schema
  version. Adding a table is not a new version: tables are created when missing, and an older
  x402gate ignores tables it does not know, so old and new workers can share one file during a
  rolling upgrade.
* Credit amounts are stored as decimal text and computed with Python integers: SQLite's
  INTEGER is 64-bit and silently turns an overflowing sum into a float, while the ledger holds
  any ``uint256``. Every ledger operation reads and writes in one ``BEGIN IMMEDIATE``
  transaction, so a process killed at any point leaves either all of it or none of it.
* The credit ledger's spending writes (reserve, commit, release, and the expiry of stale
  holds) are committed with ``synchronous=normal`` even when the store is ``full``; top-ups
  (money in) and every replay and idempotency write keep ``synchronous``. In WAL mode a
  ``normal`` commit is written (other processes see it at once, so reservations still prevent
  overdraw across processes) but not fsynced: a process crash loses nothing, a power cut may
  lose what was written since the last fsync. A power cut only ever loses a *suffix* of the WAL,
  and every fully synced write fsyncs all earlier frames too, so what can be lost is a trailing
  run of spending writes, and each such loss favours the payer: a lost reservation leaves its
  request uncharged; a lost commit or release leaves the hold in place until it expires
  (``credit_ttl_seconds``) and returns whole to the payer. Nothing can charge the payer twice,
  lose a top-up or create credit out of nothing; the operator may lose the charges of the last
  requests before the power cut. ``ledger_synchronous=full`` fsyncs those writes too (about two
  fsyncs more per request served from credit).
* A claim whose answer is on the way (*sending*, see :meth:`~x402gate.stores.base.Store.mark_used`)
  is a ``used`` row plus a row of ``x402gate_answering`` (its last sign of life), so that files
  and workers of before it read such a claim as used: a replay, the safe reading. Marking the
  answer delivered deletes that row, with ``synchronous`` like every replay write; it is one
  transaction after the answer went out, off the client's critical path.
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
    CREDIT_RECORD_RETENTION_SECONDS,
    IN_FLIGHT_UNSETTLED,
    MAX_CREDIT_AMOUNT,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_block,
    check_credit_account,
    check_credit_amount,
    check_credit_id,
    check_credit_reserve,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
    check_in_flight_admit,
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


def _read_account(conn: sqlite3.Connection, account: str) -> CreditBalance | None:
    row = conn.execute(
        "SELECT available, reserved, topped_up, charged FROM x402gate_credit_account"
        " WHERE account = ?",
        (account,),
    ).fetchone()
    return None if row is None else CreditBalance(*(int(value) for value in row))


def _write_account(conn: sqlite3.Connection, account: str, **values: int) -> None:
    if any(value < 0 for value in values.values()):  # unreachable unless the file was edited
        raise StoreError(f"credit account {account!r} would go negative: {values}")
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(
        f"UPDATE x402gate_credit_account SET {assignments} WHERE account = ?",
        (*(str(value) for value in values.values()), account),
    )


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
    supports_credit: ClassVar[bool] = True
    supports_in_flight: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True

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
        self._next_purge = float("-inf")
        self._next_idem_purge = float("-inf")
        self._next_credit_purge = float("-inf")
        self._next_in_flight_purge = float("-inf")
        _LIVE_STORES.add(self)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``;
        ``?timeout=&synchronous=&ledger_synchronous=``."""
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
            if name not in ("timeout", "synchronous", "ledger_synchronous") or len(values) != 1:
                raise ConfigurationError(
                    f"SQLite store URL {url!r}: unknown or repeated option {name!r} "
                    "(accepted: timeout, synchronous, ledger_synchronous)"
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
            ledger_synchronous=options.get("ledger_synchronous", "normal"),
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
            # A new entry: nothing of an expired one carries over (its last recovery check).
            conn.execute("DELETE FROM x402gate_recovery WHERE key = ?", (key,))
            conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_replay (key, resource, token, state, expires_at)"
                " VALUES (?, ?, ?, 'held', ?)",
                (key, resource, token, expires_at),
            )
            return ClaimResult.CLAIMED

        return self._write("claim", run)

    def release(self, key: str, token: str) -> bool:
        return self._finish("release", key, token, "released")

    def mark_used(self, key: str, token: str, now: float | None = None) -> bool:
        # "sending" is a used row with a row in x402gate_answering: files and workers of before
        # it see a used claim (a replay), which is the safe reading.
        if now is None:

            def answered(conn: sqlite3.Connection) -> bool:
                cursor = conn.execute(
                    "UPDATE x402gate_replay SET state = 'used'"
                    " WHERE key = ? AND token = ? AND state IN ('held', 'used')",
                    (key, token),
                )
                if cursor.rowcount != 1:
                    return False
                conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
                return True

            # Synced like every replay write: it comes after the answer went out (off the
            # client's critical path), and a power cut must not make an answer look undelivered.
            return self._write("mark_used", answered)

        def sending(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = ? AND r.token = ?",
                (key, token),
            ).fetchone()
            if row is None or row[0] == "released":
                return False
            if row[0] == "used" and row[2] is None:
                return True  # answered already: it stays answered
            conn.execute("UPDATE x402gate_replay SET state = 'used' WHERE key = ?", (key,))
            conn.execute(
                "INSERT INTO x402gate_answering (key, alive_at, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET alive_at = max(alive_at, excluded.alive_at),"
                " expires_at = excluded.expires_at",
                (key, now, row[1]),
            )
            return True

        return self._write("mark_used", sending)

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT r.token, r.expires_at, c.checked_at, r.state, a.alive_at"
                " FROM x402gate_replay AS r"
                " LEFT JOIN x402gate_recovery AS c ON c.key = r.key"
                " LEFT JOIN x402gate_answering AS a ON a.key = r.key"
                " WHERE r.key = ? AND r.state IN ('held', 'used') AND r.resource = ?",
                (key, resource),
            ).fetchone()
            if row is None or now >= row[1] or (row[2] is not None and now < row[2] + min_interval):
                return None
            if row[3] == "used" and (
                row[4] is None or answer_grace is None or now < row[4] + answer_grace
            ):
                return None  # answered, or its request may still be sending the answer
            # A table of its own, so that files written before recovery existed keep working.
            conn.execute(
                "INSERT OR REPLACE INTO x402gate_recovery (key, checked_at, expires_at)"
                " VALUES (?, ?, ?)",
                (key, now, row[1]),
            )
            token: str = row[0]
            return token

        return self._write("recovery_check", run)

    def take_over(self, key: str, holder: str, token: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_replay SET token = ?3, state = 'held'"
                " WHERE key = ?1 AND ((state = 'held' AND token IN (?2, ?3))"
                " OR (state = 'used' AND token = ?2"
                " AND key IN (SELECT key FROM x402gate_answering WHERE key = ?1)))",
                (key, holder, token),
            )
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM x402gate_answering WHERE key = ?", (key,))
            return True

        return self._write("take_over", run)

    def state(self, key: str, now: float) -> str | None:
        # One SELECT is a consistent snapshot on its own; taking the write lock would only
        # make readers queue behind writers.
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(
                        "SELECT r.state, r.expires_at, a.key FROM x402gate_replay AS r"
                        " LEFT JOIN x402gate_answering AS a ON a.key = r.key WHERE r.key = ?",
                        (key,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("state", exc) from exc
        if row is None or now >= row[1]:
            return None
        state: str = "sending" if row[0] == "used" and row[2] is not None else row[0]
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
        conn.execute(
            "DELETE FROM x402gate_recovery WHERE key IN"
            " (SELECT key FROM x402gate_recovery WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_LIMIT),
        )
        conn.execute(
            "DELETE FROM x402gate_answering WHERE key IN"
            " (SELECT key FROM x402gate_answering WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_LIMIT),
        )
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
        state: str = "sending" if row[0] == "used" and row[2] is not None else row[0]
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

    # -- credit ledger ----------------------------------------------------------------------

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")

        def run(conn: sqlite3.Connection) -> int:
            self._purge_credit(conn, now)
            applied = conn.execute(
                "SELECT account, amount FROM x402gate_credit_topup WHERE ref = ?", (ref,)
            ).fetchone()
            if applied is not None and (applied[0], int(applied[1])) != (account, amount):
                raise ValueError(
                    f"credit top-up ref {ref!r:.80} was already applied to another account "
                    "or amount"
                )
            self._expire_held(conn, account, now)
            balance = _read_account(conn, account)
            if balance is None:
                balance = CreditBalance(0, 0, 0, 0)
                conn.execute(
                    "INSERT INTO x402gate_credit_account"
                    " (account, available, reserved, topped_up, charged)"
                    " VALUES (?, '0', '0', '0', '0')",
                    (account,),
                )
            if applied is not None:
                return balance.available
            if balance.topped_up + amount > MAX_CREDIT_AMOUNT:
                raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
            conn.execute(
                "INSERT INTO x402gate_credit_topup (ref, account, amount, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (ref, account, str(amount), now),
            )
            _write_account(
                conn,
                account,
                available=balance.available + amount,
                topped_up=balance.topped_up + amount,
            )
            return balance.available + amount

        return self._write("credit_topup", run)

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_credit(conn, now)
            self._expire_held(conn, account, now)
            known = conn.execute(
                "SELECT account, amount, state, expires_at FROM x402gate_credit_reservation"
                " WHERE id = ?",
                (reservation_id,),
            ).fetchone()
            if known is not None:
                return (
                    known[2] == "held"
                    and now < known[3]
                    and (known[0], int(known[1])) == (account, amount)
                )
            balance = _read_account(conn, account)
            if balance is None or balance.available < amount:
                return False
            conn.execute(
                "INSERT INTO x402gate_credit_reservation"
                " (id, account, amount, state, charged, expires_at, created_at)"
                " VALUES (?, ?, ?, 'held', '0', ?, ?)",
                (reservation_id, account, str(amount), expires_at, now),
            )
            _write_account(
                conn,
                account,
                available=balance.available - amount,
                reserved=balance.reserved + amount,
            )
            return True

        # Not fsynced (unless ledger_synchronous=full): see the module documentation.
        return self._write("credit_reserve", run, synchronous=self.ledger_synchronous)

    def credit_commit(self, reservation_id: str, charge: int, now: float) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)

        def run(conn: sqlite3.Connection) -> int:
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = conn.execute(
                    "SELECT account, amount, state, charged FROM x402gate_credit_reservation"
                    " WHERE id = ?",
                    (reservation_id,),
                ).fetchone()
                if row is None:
                    return 0
                if row[2] == "expired":
                    return self._commit_late(conn, reservation_id, row[0], int(row[1]), charge)
                return int(row[3]) if row[2] == "committed" else 0
            charged = min(charge, live[1])
            self._end_reservation(conn, reservation_id, live[0], live[1], "committed", charged, now)
            return charged

        return self._write("credit_commit", run, synchronous=self.ledger_synchronous)

    def _commit_late(
        self, conn: sqlite3.Connection, reservation_id: str, account: str, amount: int, charge: int
    ) -> int:
        # The answer outlived its hold: the charge is still owed, but only what is available
        # now can pay it (the rest may be held by other requests).
        balance = _read_account(conn, account)
        late = min(charge, amount, balance.available if balance is not None else 0)
        conn.execute(
            "UPDATE x402gate_credit_reservation SET state = 'committed', charged = ? WHERE id = ?",
            (str(late), reservation_id),
        )
        if balance is not None:
            _write_account(
                conn,
                account,
                available=balance.available - late,
                reserved=balance.reserved,
                charged=balance.charged + late,
            )
        return late

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")

        def run(conn: sqlite3.Connection) -> bool:
            if self._live(conn, reservation_id, now) is None:
                return False
            conn.execute(
                "UPDATE x402gate_credit_reservation SET expires_at = max(expires_at, ?)"
                " WHERE id = ?",
                (expires_at, reservation_id),
            )
            return True

        return self._write("credit_extend", run, synchronous=self.ledger_synchronous)

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_credit(conn, now)
            live = self._live(conn, reservation_id, now)
            if live is None:
                row = conn.execute(
                    "SELECT 1 FROM x402gate_credit_reservation WHERE id = ? AND state = 'released'",
                    (reservation_id,),
                ).fetchone()
                return row is not None
            self._end_reservation(conn, reservation_id, live[0], live[1], "released", 0, now)
            return True

        return self._write("credit_release", run, synchronous=self.ledger_synchronous)

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)

        def run(conn: sqlite3.Connection) -> CreditBalance:
            self._expire_held(conn, account, now)
            return _read_account(conn, account) or CreditBalance(0, 0, 0, 0)

        return self._write("credit_balance", run)

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(
                        "SELECT account, amount, state, charged, expires_at"
                        " FROM x402gate_credit_reservation WHERE id = ?",
                        (reservation_id,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("credit_reservation", exc) from exc
        if row is None:
            return None
        state = "expired" if row[2] == "held" and now >= row[4] else row[2]
        return CreditReservation(row[0], int(row[1]), state, int(row[3]), row[4])

    def credit_reconcile(self, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            self._purge_credit(conn, now)
            rows = conn.execute(
                "SELECT id, account, amount FROM x402gate_credit_reservation"
                " WHERE state = 'held' AND expires_at <= ? LIMIT ?",
                (now, _PURGE_LIMIT),
            ).fetchall()
            for rid, account, amount in rows:
                self._end_reservation(conn, rid, account, int(amount), "expired", 0, now)
            return len(rows)

        # Batches of one transaction each, so other writers get their turn during a large one.
        moved = 0
        while True:
            batch = self._write("credit_reconcile", run, synchronous=self.ledger_synchronous)
            moved += batch
            if batch < _PURGE_LIMIT:
                return moved

    def _live(
        self, conn: sqlite3.Connection, reservation_id: str, now: float
    ) -> tuple[str, int] | None:
        """(account, amount) if the reservation is held and live, after expiring its account."""
        row = conn.execute(
            "SELECT account, amount, expires_at FROM x402gate_credit_reservation"
            " WHERE id = ? AND state = 'held'",
            (reservation_id,),
        ).fetchone()
        if row is None:
            return None
        self._expire_held(conn, row[0], now)
        return (row[0], int(row[1])) if now < row[2] else None

    def _expire_held(self, conn: sqlite3.Connection, account: str, now: float) -> None:
        rows = conn.execute(
            "SELECT id, amount FROM x402gate_credit_reservation"
            " WHERE account = ? AND state = 'held' AND expires_at <= ?",
            (account, now),
        ).fetchall()
        for rid, amount in rows:
            self._end_reservation(conn, rid, account, int(amount), "expired", 0, now)

    def _end_reservation(
        self,
        conn: sqlite3.Connection,
        reservation_id: str,
        account: str,
        amount: int,
        state: str,
        charged: int,
        now: float,
    ) -> None:
        balance = _read_account(conn, account)
        if balance is None or balance.reserved < amount:
            # Only a hand-edited file gets here; refusing keeps the ledger from going negative.
            raise StoreError(
                f"SQLite store {self.path}: credit account {account!r} does not hold "
                f"reservation {reservation_id!r}"
            )
        conn.execute(
            "UPDATE x402gate_credit_reservation SET state = ?, charged = ?, finished_at = ?"
            " WHERE id = ?",
            (state, str(charged), now, reservation_id),
        )
        _write_account(
            conn,
            account,
            available=balance.available + amount - charged,
            reserved=balance.reserved - amount,
            charged=balance.charged + charged,
        )

    def _purge_credit(self, conn: sqlite3.Connection, now: float) -> None:
        if now < self._next_credit_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_credit_reservation WHERE id IN"
            " (SELECT id FROM x402gate_credit_reservation"
            " WHERE expires_at <= ? AND state != 'held' LIMIT ?)",
            (now - CREDIT_RECORD_RETENTION_SECONDS, _PURGE_LIMIT),
        ).rowcount
        self._next_credit_purge = now if deleted >= _PURGE_LIMIT else now + _PURGE_INTERVAL

    # -- plumbing ---------------------------------------------------------------------------

    # -- payments in flight -------------------------------------------------------------------
    # Amounts are decimal text summed with Python integers (as in the credit ledger); the sum
    # and the insert run in one BEGIN IMMEDIATE transaction, so admissions of one payer from
    # every process on the file are serialized.

    def in_flight_admit(
        self,
        account: str,
        entry_id: str,
        amount: int,
        balance: int,
        block: int,
        expires_at: float,
        now: float,
    ) -> bool:
        check_in_flight_admit(account, entry_id, amount, balance, block, expires_at)

        def run(conn: sqlite3.Connection) -> bool:
            self._purge_in_flight(conn, account, now)
            rows = conn.execute(
                "SELECT id, amount, until_block FROM x402gate_in_flight WHERE account = ?",
                (account,),
            ).fetchall()
            for row_id, row_amount, _ in rows:
                if row_id == entry_id:
                    return int(row_amount) == amount
            held = sum(int(row_amount) for _, row_amount, until in rows if until > block)
            if held + amount > balance:
                return False
            conn.execute(
                "INSERT INTO x402gate_in_flight (account, id, amount, until_block, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account, entry_id, str(amount), IN_FLIGHT_UNSETTLED, float(expires_at)),
            )
            return True

        return self._write("in_flight_admit", run, self.ledger_synchronous)

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE x402gate_in_flight SET until_block = ?, expires_at = ?"
                " WHERE account = ? AND id = ? AND expires_at > ?",
                (block, float(expires_at), account, entry_id, now),
            )
            return cursor.rowcount == 1

        return self._write("in_flight_settle", run, self.ledger_synchronous)

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM x402gate_in_flight WHERE account = ? AND id = ?", (account, entry_id)
            )
            return cursor.rowcount == 1

        return self._write("in_flight_release", run, self.ledger_synchronous)

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT amount FROM x402gate_in_flight"
                        " WHERE account = ? AND until_block > ? AND expires_at > ?",
                        (account, block, now),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                self._discard()
                raise self._error("in_flight_total", exc) from exc
        return sum(int(row[0]) for row in rows)

    def _purge_in_flight(self, conn: sqlite3.Connection, account: str, now: float) -> None:
        conn.execute(
            "DELETE FROM x402gate_in_flight WHERE account = ? AND expires_at <= ?", (account, now)
        )
        if now < self._next_in_flight_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_in_flight WHERE (account, id) IN"
            " (SELECT account, id FROM x402gate_in_flight WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_LIMIT),
        ).rowcount
        self._next_in_flight_purge = now if deleted >= _PURGE_LIMIT else now + _PURGE_INTERVAL

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
        relaxed = synchronous is not None and synchronous != self.synchronous
        with self._lock:
            try:
                conn = self._connection()
                if relaxed:
                    conn.execute(f"PRAGMA synchronous = {synchronous}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = run(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                finally:
                    if relaxed:
                        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
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
