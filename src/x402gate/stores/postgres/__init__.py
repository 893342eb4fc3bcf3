"""``postgresql://...``: one database shared by every process on every host.

Replay claims, idempotency records, the credit ledger, payments in flight and payment-channel
state live in one PostgreSQL database (psycopg 3, ``pip install 'x402gate[postgres]'``).

URLs: any libpq URL, ``postgresql://user:password@host:5432/dbname`` or ``postgres://...``
(``?host=/run/postgresql`` for a unix socket; libpq options such as ``sslmode`` pass through).
Options of the store itself, taken out of the URL before it reaches libpq:

* ``pool_min_size`` (default 1) and ``pool_max_size`` (default 10): connections kept by the
  store's pool in each process (``psycopg_pool``); the gate's worker threads share them.
* ``pool_timeout`` (seconds, default 5): how long an operation waits for a connection, to
  connect, or for a lock another transaction holds (``lock_timeout``); past it the operation
  fails closed with :class:`StoreError`.
* ``schema``: a schema of its own for the tables (created if missing), instead of the
  connection's ``search_path``.
* ``migrate`` (``true``, the default, or ``false``): whether the store creates and migrates
  its tables when it opens. With ``false`` it only checks their version and refuses to run on
  an older or missing schema: for a deployment whose migrations own the schema (Django's,
  running :func:`~x402gate.stores.postgres.schema.schema_statements`, see the docs).

How it stays correct:

* Every operation is one transaction (``READ COMMITTED``). One that decides on rows first takes
  transaction-level advisory locks on what it changes (the authorization's key, the payment id,
  the credit account, the channel), so the read, the decision and the write are one step for
  every process and host; see :mod:`.connection` for why row locks alone do not suffice.
* Amounts are ``NUMERIC(78, 0)``: exact, any ``uint256``. Sums are computed exactly.
* Durability is the server's: a commit that answered is on disk (``synchronous_commit`` on).
* A lost connection fails the operation with :class:`StoreError` (closed, never open); the
  pool checks connections before use and replaces broken ones, so the store recovers by itself
  once the server is reachable again.
* The schema is versioned in ``x402gate_meta`` and migrated on open, once, under an advisory
  lock (:mod:`.schema`); a database written by a newer x402gate is refused.
"""

from __future__ import annotations

import urllib.parse
from typing import ClassVar

from ...errors import ConfigurationError
from ..urls import redact_url
from .channels import PostgresChannels
from .credit import PostgresCredit
from .idempotency import PostgresIdempotency
from .in_flight import PostgresInFlight
from .leases import PostgresLeases
from .replay import PostgresReplay
from .schema import SCHEMA_VERSION, schema_statements

__all__ = ["SCHEMA_VERSION", "PostgresStore", "schema_statements"]

_OPTIONS = ("pool_min_size", "pool_max_size", "pool_timeout", "schema", "migrate")


class PostgresStore(
    PostgresReplay,
    PostgresIdempotency,
    PostgresCredit,
    PostgresInFlight,
    PostgresChannels,
    PostgresLeases,
):
    """Store in a PostgreSQL database, safe across threads, processes and hosts.

    ``conninfo`` is a libpq URL or ``key=value`` string. The pool is opened, and the tables
    created or migrated, on first use (or :meth:`ping`).
    """

    scheme: ClassVar[str] = "postgresql"
    aliases: ClassVar[tuple[str, ...]] = ("postgres",)
    blocking: ClassVar[bool] = True
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
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user:password@host:port/db?pool_max_size=&pool_timeout=&schema=
        &migrate=`` (``postgres://`` too); other query options go to libpq."""
        shown = redact_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            query = urllib.parse.parse_qsl(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            )
        except ValueError:
            raise ConfigurationError(f"PostgreSQL store URL {shown} is malformed") from None
        if parts.fragment:
            raise ConfigurationError(f"PostgreSQL store URL {shown} is malformed (a #fragment)")
        ours: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for name, value in query:
            if name in _OPTIONS:
                if name in ours:
                    raise ConfigurationError(
                        f"PostgreSQL store URL {shown}: option {name!r} is repeated"
                    )
                ours[name] = value
            else:
                rest.append((name, value))
        # Spliced, not urlunsplit: that would turn "postgresql:///db" into "postgresql:/db".
        conninfo = url.partition("?")[0] + (f"?{urllib.parse.urlencode(rest)}" if rest else "")
        try:
            min_size = int(ours.get("pool_min_size", "1"))
            max_size = int(ours.get("pool_max_size", "10"))
            timeout = float(ours.get("pool_timeout", "5"))
        except ValueError:
            raise ConfigurationError(
                f"PostgreSQL store URL {shown}: pool_min_size and pool_max_size must be "
                "integers, pool_timeout a number of seconds"
            ) from None
        migrate = ours.get("migrate", "true").lower()
        if migrate not in ("true", "false"):
            raise ConfigurationError(f"PostgreSQL store URL {shown}: migrate must be true or false")
        return cls(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            migrate=migrate == "true",
            schema=ours.get("schema"),
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"
