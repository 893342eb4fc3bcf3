"""pytest fixtures for a real Redis; the x402gate pytest plugin re-exports them.

* ``redis_server`` (session): one :class:`~x402gate.testing.redis_server.RedisServer` for the
  whole run. Without a ``redis-server`` binary the tests that use it are skipped, unless
  ``X402GATE_REQUIRE_REDIS=1`` (CI) makes that a failure: a missing server must never let
  Redis tests pass by not running.
* ``redis_url`` (function): the server's URL, emptied (``FLUSHALL``) before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .redis_server import ENV_BINARY, RedisServer, RedisServerError, find_redis_server

__all__ = ["redis_server", "redis_url"]

ENV_REQUIRE = "X402GATE_REQUIRE_REDIS"


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
    pytest.skip(f"{reason}; set {ENV_REQUIRE}=1 to make this a failure")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port, shared by the session."""
    binary = find_redis_server()
    if binary is None:
        configured = os.environ.get(ENV_BINARY)
        _unavailable(
            f"{ENV_BINARY}={configured!r} is not an executable"
            if configured
            else f"redis-server not found on PATH (install it or set {ENV_BINARY})"
        )
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
