"""``redis://``: a replay store and credit ledger shared by every host behind a load balancer.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, with redis-py's query options (``socket_timeout``, ...)
and ``key_prefix`` (default ``x402gate:``). An existing synchronous ``redis.Redis`` client may be
passed instead; the store then never closes it.

Each entry is one hash, ``<prefix>replay:<key>`` for claims (a claim whose answer is on the way has
the state ``sending`` and its last sign of life in ``alive_at``) and ``<prefix>idem:<id>`` for
payment identifiers. Every check-and-set is one Lua script (``lua/*.lua``, see :mod:`.scripts`),
which Redis runs atomically; scripts are sent once and then called by SHA (redis-py's
``register_script`` reloads them after a ``SCRIPT FLUSH`` or a failover). Each concern has its
module (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`, :mod:`.in_flight`) over the shared
client (:mod:`.connection`), its key space under the prefix and its scripts. Stored responses are
base64 text, so that a client built with ``decode_responses=True`` reads them back intact.

Credit ledger, under ``<prefix>credit:``: a hash per account (``acct:<account>``: available,
reserved, topped_up, charged), a hash per top-up ref (``topup:<ref>``) and per reservation
(``res:<id>``), a sorted set of each account's held reservations by ``expires_at``
(``held:<account>``) and one of all of them (``expiry``) for reconciling. Amounts are decimal
text and the scripts add and compare them digit by digit: Lua numbers are doubles, exact only up
to 2**53, and ``HINCRBY`` stops at 2**63, while the ledger holds any ``uint256``. A script
reaches keys it reads from another key (the reservations of an account), so the ledger needs one
Redis server (with replicas), not a Redis Cluster. Accounts, refs and held reservations never
expire; finished reservations expire :data:`~x402gate.stores.base.CREDIT_RECORD_RETENTION_SECONDS`
after their ``expires_at``. Configure Redis without eviction (``maxmemory-policy noeviction``)
and with persistence (AOF) when it holds money.

Payments in flight, under ``<prefix>credit:inflight:<account>``: one hash per payer account, a
field per payment (``amount|until_block|expires_at``), checked and added by one script with the
ledger's exact decimal arithmetic, so admissions of one payer from every host are serialized.
The hash's Redis TTL follows its longest-lived entry (plus the grace below).

Payment channels, under ``<prefix>channel:``: a hash per channel, a sorted set of the channels
with vouchers left to claim and one of every channel id; see :mod:`.channels`.

Expiry: the scripts judge liveness with the caller's ``now`` against the stored ``expires_at``,
exactly like the other backends. The key's Redis TTL only collects garbage: it is set relative to
the caller's clock (``expires_at - now``) plus :data:`EXPIRY_GRACE_SECONDS`, so clock skew between
application hosts and the Redis host cannot make an entry vanish while a host still treats the
authorization as valid, and an injected clock in tests behaves like the real one.
"""

from __future__ import annotations

import urllib.parse
from typing import ClassVar

from ...errors import ConfigurationError
from ..urls import redact_url
from .channels import RedisChannels
from .connection import EXPIRY_GRACE_SECONDS
from .credit import RedisCredit
from .idempotency import RedisIdempotency
from .in_flight import RedisInFlight
from .leases import RedisLeases
from .replay import RedisReplay

__all__ = ["EXPIRY_GRACE_SECONDS", "RedisStore"]


class RedisStore(
    RedisReplay, RedisIdempotency, RedisCredit, RedisInFlight, RedisChannels, RedisLeases
):
    """Replay store in Redis (one server, or a primary with replicas), atomic through Lua.

    Give either ``url`` or ``client``. ``socket_timeout`` applies to clients built from a URL
    unless the URL sets its own; without one a stalled server would hang requests forever.
    """

    scheme: ClassVar[str] = "redis"
    aliases: ClassVar[tuple[str, ...]] = ("rediss", "unix")
    blocking: ClassVar[bool] = True
    shared_across_processes: ClassVar[bool] = True
    supports_idempotency: ClassVar[bool] = True
    supports_credit: ClassVar[bool] = True
    supports_in_flight: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True
    supports_channels: ClassVar[bool] = True
    supports_leases: ClassVar[bool] = True
    supports_journal: ClassVar[bool] = True

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url``; ``key_prefix`` is read from the query, the rest is redis-py's."""
        base, question, rest = url.partition("?")
        query_text, hash_sign, fragment = rest.partition("#")
        query = urllib.parse.parse_qsl(query_text, keep_blank_values=True)
        prefixes = [value for name, value in query if name == "key_prefix"]
        if not prefixes:
            return cls(url)
        if len(prefixes) > 1:
            raise ConfigurationError(f"Redis store URL {redact_url(url)!r}: key_prefix repeated")
        # Splice the query back rather than urlunsplit, which would turn unix:///p into unix:/p.
        rest_query = urllib.parse.urlencode([(k, v) for k, v in query if k != "key_prefix"])
        url = f"{base}{question if rest_query else ''}{rest_query}{hash_sign}{fragment}"
        return cls(url, key_prefix=prefixes[0])
