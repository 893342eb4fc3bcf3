"""``sqlite:///path.db``: the embedded default, one file shared by every process on the host.

Replay claims, idempotency records, the credit ledger, payment-channel state and the payments
journal live in one file.

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
* Each concern gets its own table and its own module (:mod:`.replay`, :mod:`.idempotency`,
  :mod:`.credit`, :mod:`.in_flight`, :mod:`.channels`), over the shared connection
  (:mod:`.connection`);
  :mod:`.schema` creates the tables and checks the file's version.
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

import urllib.parse
from typing import ClassVar

from ...errors import ConfigurationError
from .channels import SQLiteChannels
from .credit import SQLiteCredit
from .idempotency import SQLiteIdempotency
from .in_flight import SQLiteInFlight
from .leases import SQLiteLeases
from .replay import SQLiteReplay
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]


class SQLiteStore(
    SQLiteReplay, SQLiteIdempotency, SQLiteCredit, SQLiteInFlight, SQLiteChannels, SQLiteLeases
):
    """Replay store in a SQLite file (WAL), safe across threads and processes of one host.

    ``path`` is made absolute when the store is created. The file and its tables are created on
    first use (or :meth:`ping`); its directory must exist.
    """

    scheme: ClassVar[str] = "sqlite"
    blocking: ClassVar[bool] = True
    serial: ClassVar[bool] = True
    inline_first: ClassVar[bool] = True
    shared_across_processes: ClassVar[bool] = True
    supports_idempotency: ClassVar[bool] = True
    supports_credit: ClassVar[bool] = True
    supports_in_flight: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True
    supports_channels: ClassVar[bool] = True
    supports_leases: ClassVar[bool] = True
    supports_journal: ClassVar[bool] = True
    supports_outbox: ClassVar[bool] = True

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
