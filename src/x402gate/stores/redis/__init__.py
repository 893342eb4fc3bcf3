"""``redis://``: a replay store and credit ledger shared by every host behind a load balancer.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, ``redis+cluster://host:port?node=host:port`` (a Redis
Cluster), ``redis+sentinel://sentinel:port/<service>?sentinel=host:port`` (the primary that
Sentinel names; see :mod:`.clients`), with redis-py's query options (``socket_timeout``, ...),
``key_prefix`` (default ``x402gate:``), and ``wait_replicas`` / ``wait_timeout`` (seconds). An
existing synchronous ``redis.Redis`` or ``RedisCluster`` client may be passed instead; the store
then never closes it.

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
reaches keys it reads from another key (the reservations of an account), so on a Redis Cluster
every ledger key carries the hash tag ``{<prefix>credit}`` (one slot: the ledger lives on one
primary); channels share one of 16 tags with their index (:mod:`.channels`), claims one of 16
tags of their own (:mod:`.replay`), and each tag has its shard of the payments journal, which a
commit writes in its own script (:mod:`.journal`); payment identifiers, each payer's payments in
flight and leases are single keys, spread over all primaries.
Accounts, refs and held reservations never expire; finished reservations expire
:data:`~x402gate.stores.base.CREDIT_RECORD_RETENTION_SECONDS` after their ``expires_at``.
Configure Redis without eviction (``maxmemory-policy noeviction``) and with persistence (AOF)
when it holds money.

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
from typing import Any, ClassVar

from ...errors import ConfigurationError
from ..urls import redact_url
from .channels import RedisChannels
from .clients import CLUSTER_SCHEMES, SENTINEL_SCHEMES
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
    """Replay store in Redis (one server, a Sentinel-managed primary or a Redis Cluster),
    atomic through Lua.

    Give either ``url`` or ``client`` (``redis.Redis``, also one from ``Sentinel.master_for``,
    or ``redis.cluster.RedisCluster``). ``socket_timeout`` applies to clients built from a URL
    unless the URL sets its own; without one a stalled server would hang requests forever.
    ``wait_replicas=N`` makes every write of the credit ledger, payments in flight and payment
    channels wait (``WAIT``, at most ``wait_timeout`` seconds) until N replicas have it, and
    raise :class:`~x402gate.errors.StoreError` otherwise (see ``docs/scaling.md``).
    """

    scheme: ClassVar[str] = "redis"
    aliases: ClassVar[tuple[str, ...]] = ("rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)
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
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url``; ``key_prefix``, ``wait_replicas`` and ``wait_timeout`` are read
        from the query, the rest is the client's (see :mod:`.clients`)."""
        base, question, rest = url.partition("?")
        query_text, hash_sign, fragment = rest.partition("#")
        query = urllib.parse.parse_qsl(query_text, keep_blank_values=True)
        own: dict[str, str] = {}
        for name, value in query:
            if name in _OWN_OPTIONS:
                if name in own:
                    raise ConfigurationError(
                        f"Redis store URL {redact_url(url)!r}: {name} repeated"
                    )
                own[name] = value
        if not own:
            return cls(url)
        # Splice the query back rather than urlunsplit, which would turn unix:///p into unix:/p.
        rest_query = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
        url = f"{base}{question if rest_query else ''}{rest_query}{hash_sign}{fragment}"
        kwargs: dict[str, Any] = {}
        if "key_prefix" in own:
            kwargs["key_prefix"] = own["key_prefix"]
        try:
            if "wait_replicas" in own:
                kwargs["wait_replicas"] = int(own["wait_replicas"])
            if "wait_timeout" in own:
                kwargs["wait_timeout"] = float(own["wait_timeout"])
        except ValueError:
            raise ConfigurationError(
                f"Redis store URL {redact_url(url)!r}: wait_replicas is a whole number, "
                "wait_timeout a number of seconds"
            ) from None
        return cls(url, **kwargs)


_OWN_OPTIONS = frozenset({"key_prefix", "wait_replicas", "wait_timeout"})
