"""Building the Redis store's client from a URL: one server, a Redis Cluster or Sentinel.

* ``redis://``, ``rediss://``, ``unix://``: redis-py's own URL forms, one server.
* ``redis+cluster://[[user]:password@]host:port[/]?node=host:port&...`` (``rediss+cluster://``
  for TLS): a Redis Cluster, reached through the seed node in the URL and any ``node=`` options
  (more seeds, tried when the first is down). The cluster has no database number.
* ``redis+sentinel://[[user]:password@]host:port/<service>[/<db>]?sentinel=host:port&...``: the
  primary that the sentinels at ``host:port`` (and every ``sentinel=``) name for ``<service>``.
  The user and password are the data servers'; ``sentinel_password=`` (and
  ``sentinel_username=``) authenticate to the sentinels themselves. After a failover the client
  asks the sentinels again and follows the new primary.

The other query options are redis-py's connection options (``socket_timeout``, ...), as for
``redis://``. ``key_prefix``, ``wait_replicas`` and ``wait_timeout`` are the store's own and
are taken out first (:meth:`~x402gate.stores.redis.RedisStore.from_url`).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ...errors import ConfigurationError, StoreError
from ..urls import redact_url

__all__ = ["CLUSTER_SCHEMES", "SENTINEL_SCHEMES", "client_from_url", "url_secrets"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)


def url_secrets(url: str) -> list[str]:
    """Every password the URL carries (user info, ``password=``, ``sentinel_password=``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    return found + [value for name, value in query if name.endswith("password") and value]


def _address(url: str, text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"Redis store URL {redact_url(url)!r}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def _split(
    url: str, names: tuple[str, ...]
) -> tuple[urllib.parse.SplitResult, dict[str, list[str]], str]:
    """The URL's parts, its options named ``names`` (taken out) and the rest of its query."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    taken: dict[str, list[str]] = {name: [] for name in names}
    rest = []
    for name, value in query:
        if name in taken:
            taken[name].append(value)
        else:
            rest.append((name, value))
    return parts, taken, urllib.parse.urlencode(rest)


def _redis_options(redis: Any, url: str, plain: str) -> dict[str, Any]:
    """redis-py's connection options for ``plain`` (a ``redis://`` URL), refusing bad ones."""
    try:
        options: dict[str, Any] = redis.connection.parse_url(plain)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Redis store URL {redact_url(url)!r} is not usable: {exc}"
        ) from None
    return options


def client_from_url(redis: Any, url: str, socket_timeout: float) -> Any:
    """A redis-py client for ``url``: ``redis.Redis``, ``RedisCluster`` or a Sentinel primary.

    :raises ConfigurationError: for a malformed URL or an unknown option.
    :raises StoreError: when no seed of a Redis Cluster answers (redis-py reads the cluster's
        slot map as it builds the client).
    """
    scheme = url.partition("://")[0].lower()
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    parts = urllib.parse.urlsplit(url)
    if scheme in CLUSTER_SCHEMES + SENTINEL_SCHEMES and not parts.hostname:
        what = "seed node" if scheme in CLUSTER_SCHEMES else "sentinel"
        raise ConfigurationError(f"Redis store URL {redact_url(url)!r}: no {what} host:port")
    try:
        if scheme in CLUSTER_SCHEMES:
            return _cluster_client(redis, url, timeouts)
        if scheme in SENTINEL_SCHEMES:
            return _sentinel_client(redis, url, timeouts)
        return _single_client(redis, url, timeouts)
    except ConfigurationError:
        raise
    except (redis.exceptions.RedisClusterException, redis.exceptions.RedisError) as exc:
        # RedisCluster asks the seeds for the slot map as it is built: none answered.
        message = f"{type(exc).__name__}: {exc}"
        for secret in url_secrets(url):
            message = message.replace(secret, "***")
        raise StoreError(
            f"Redis store {redact_url(url)}: cannot reach the cluster: {message}"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Redis store URL {redact_url(url)!r} is not usable: {exc}"
        ) from None


def _single_client(redis: Any, url: str, timeouts: dict[str, float]) -> Any:
    parts = urllib.parse.urlsplit(url)
    db = parts.path.strip("/")
    if parts.scheme.lower() in ("redis", "rediss") and db and not db.isdigit():
        raise ConfigurationError(
            f"Redis store URL {redact_url(url)!r}: the path must be a database number"
        )
    client = redis.Redis.from_url(url, **timeouts)
    pool = client.connection_pool
    # Building (not connecting) one connection finds options redis-py does not know, which it
    # would otherwise only report on the first request.
    pool.connection_class(**pool.connection_kwargs)
    return client


def _cluster_client(redis: Any, url: str, timeouts: dict[str, float]) -> Any:
    cluster_node, redis_cluster = redis.cluster.ClusterNode, redis.cluster.RedisCluster
    parts, taken, rest = _split(url, ("node",))
    if parts.path.strip("/"):
        raise ConfigurationError(
            f"Redis store URL {redact_url(url)!r}: a Redis Cluster has no database number"
        )
    plain_scheme = parts.scheme.lower().partition("+")[0]
    plain = urllib.parse.urlunsplit((plain_scheme, parts.netloc, "", rest, ""))
    options = _redis_options(redis, url, plain)
    options.pop("db", None)
    seeds = [cluster_node(*_address(url, node)) for node in taken["node"]]
    for name, value in timeouts.items():
        options.setdefault(name, value)
    host, port = options.pop("host"), options.pop("port", 6379)
    client = redis_cluster(startup_nodes=[cluster_node(host, port), *seeds], **options)
    return client


def _sentinel_client(redis: Any, url: str, timeouts: dict[str, float]) -> Any:
    parts, taken, rest = _split(url, ("sentinel", "sentinel_password", "sentinel_username"))
    service, _, db = parts.path.strip("/").partition("/")
    if not service or (db and not db.isdigit()):
        raise ConfigurationError(
            f"Redis store URL {redact_url(url)!r}: the path must be /<service>[/<db>]"
        )
    plain = urllib.parse.urlunsplit(("redis", parts.netloc, f"/{db or 0}", rest, ""))
    options = _redis_options(redis, url, plain)
    for name, value in timeouts.items():
        options.setdefault(name, value)
    first = (options.pop("host"), options.pop("port", 26379))
    sentinels = [first, *(_address(url, node) for node in taken["sentinel"])]
    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    for name in ("password", "username"):
        values = taken[f"sentinel_{name}"]
        if len(values) > 1:
            raise ConfigurationError(
                f"Redis store URL {redact_url(url)!r}: sentinel_{name} repeated"
            )
        if values:
            sentinel_kwargs[name] = values[0]
    sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **timeouts)
    return sentinel.master_for(service, redis_class=redis.Redis, **options)
