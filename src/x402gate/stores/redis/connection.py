"""The Redis store's client: building it, failing safely, and the key spaces it uses.

Every part of the Redis store (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`,
:mod:`.in_flight`) builds on :class:`RedisConnection`: it owns the ``redis.Redis`` client,
registers each part's scripts (:meth:`RedisConnection._register_scripts`) and turns driver errors
into :class:`~x402gate.errors.StoreError` without the password (:meth:`RedisConnection._fail`).
"""

from __future__ import annotations

from typing import Any, NoReturn

from ...errors import ConfigurationError, StoreError
from ..base import Store
from ..records import CREDIT_RECORD_RETENTION_SECONDS
from ..urls import redact_url
from .clients import client_from_url, url_secrets

__all__ = ["DEFAULT_SOCKET_TIMEOUT", "EXPIRY_GRACE_SECONDS", "RedisConnection", "text"]

EXPIRY_GRACE_SECONDS = 60
"""How long past ``expires_at`` Redis keeps an entry, to absorb clock skew between hosts."""

DEFAULT_SOCKET_TIMEOUT = 5.0

DEFAULT_WAIT_TIMEOUT = 1.0
"""How long (seconds) a money-moving write waits for ``wait_replicas`` replicas by default."""

MAX_WAIT_TIMEOUT = 60.0


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "the Redis store needs the redis package: pip install 'x402gate[redis]'"
        ) from exc
    return redis


def text(value: object) -> str:
    """A script's answer as text: bytes or str, depending on the client's decode_responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisConnection(Store):
    """The client, key names and error handling every part of the Redis store shares.

    Abstract: :class:`~x402gate.stores.redis.RedisStore` is the store to use.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        key_prefix: str = "x402gate:",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        wait_replicas: int = 0,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("RedisStore needs exactly one of url= or client=")
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int):
            raise ConfigurationError("RedisStore wait_replicas must be an integer")
        if wait_replicas < 0:
            raise ConfigurationError("RedisStore wait_replicas must not be negative")
        if not 0 < wait_timeout <= MAX_WAIT_TIMEOUT:
            raise ConfigurationError(
                f"RedisStore wait_timeout must be above 0 and at most {MAX_WAIT_TIMEOUT}s"
            )
        redis = _import_redis()
        redis_cluster = redis.cluster.RedisCluster

        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
        )
        secrets: list[str] = []
        if client is None:
            assert url is not None
            client = client_from_url(redis, url, socket_timeout)
            self._owns_client = True
            self.location = redact_url(url)
            secrets += url_secrets(url)
        elif isinstance(client, redis_cluster):
            self._owns_client = False
            node: Any = client.get_default_node()
            self.location = f"cluster {node.host}:{node.port}"
        elif isinstance(client, redis.Redis):
            self._owns_client = False
            kwargs = client.connection_pool.connection_kwargs
            self.location = str(
                kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            )
        else:
            raise ConfigurationError(
                "RedisStore needs a synchronous redis.Redis or redis.cluster.RedisCluster "
                f"client, got {type(client).__name__}"
            )
        self.cluster = isinstance(client, redis_cluster)
        kwargs = (
            client.nodes_manager.connection_kwargs
            if self.cluster
            else (client.connection_pool.connection_kwargs)
        )
        if kwargs.get("password"):
            secrets.append(str(kwargs["password"]))
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        self.client: Any = client
        if self.cluster and ("{" in key_prefix or "}" in key_prefix):
            raise ConfigurationError(
                "RedisStore on a Redis Cluster: key_prefix must not contain { or }, the store "
                "places its own hash tags"
            )
        self.key_prefix = key_prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        # On a cluster, every key a multi-key script reaches must hash to one slot: the whole
        # credit ledger shares the tag {<prefix>credit}; channels are placed by .channels.
        self._credit_prefix = f"{{{key_prefix}credit}}:" if self.cluster else f"{key_prefix}credit:"
        self._channel_prefix = (
            f"{{{key_prefix}channel}}:" if self.cluster else f"{key_prefix}channel:"
        )
        self._register_scripts(client)

    def _register_scripts(self, client: Any) -> None:
        """Register the scripts of each part of the store; parts extend it and call super()."""

    def _run(self, op: str, script: Any, keys: list[str], args: list[Any], durable: bool) -> Any:
        """Run ``script``; a ``durable`` write also waits for ``wait_replicas`` replicas.

        The wait is ``WAIT`` on the very connection that ran the script (a pipeline on the
        node that serves the keys), since ``WAIT`` counts the replicas that acknowledged that
        connection's writes. Too few acknowledgements in ``wait_timeout`` raise
        :class:`~x402gate.errors.StoreError`: the write is on the primary but could be lost
        in a failover, so the caller fails closed. Driver errors become StoreError too.
        """
        try:
            if not (durable and self.wait_replicas):
                return script(keys=keys, args=args)
            return self._run_and_wait(op, script, keys, args)
        except self._redis_errors as exc:
            self._fail(op, exc)

    def _run_and_wait(self, op: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis

        for attempt in (1, 2):
            node = self.client.get_node_from_key(keys[0]) if self.cluster else None
            target = self.client if node is None else node.redis_connection
            pipe = target.pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, int(self.wait_timeout * 1000))
            try:
                answer, acknowledged = pipe.execute()
            except redis.exceptions.MovedError:
                # The slot moved (a failover): learn the new layout; the refused script did not
                # run, so it runs once more on the new primary.
                self.client.nodes_manager.initialize()
                if attempt == 2:
                    raise
                continue
            except redis.exceptions.ConnectionError:
                # The script may have run: fail closed, but find the new primary for later calls.
                if self.cluster:
                    self.client.nodes_manager.initialize()
                raise
            if int(acknowledged) < self.wait_replicas:
                raise StoreError(
                    f"Redis store {self.location}: {op} reached {int(acknowledged)} of "
                    f"{self.wait_replicas} replicas in {self.wait_timeout}s; the write may be "
                    "lost if the primary fails over"
                )
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, key_prefix={self.key_prefix!r})"

    def _credit(
        self, op: str, script: Any, keys: list[str], now: float, *args: object, durable: bool = True
    ) -> Any:
        """Run a credit script with the prelude's arguments; driver errors become StoreError.

        Writes wait for the replicas (:meth:`_run`) unless ``durable=False`` (reads).
        """
        keep_ms = (CREDIT_RECORD_RETENTION_SECONDS + EXPIRY_GRACE_SECONDS) * 1000
        prelude = [self._credit_prefix, repr(float(now)), keep_ms]
        return self._run(op, script, keys, [*prelude, *args], durable)

    def _credit_key(self, kind: str, name: str) -> str:
        return f"{self._credit_prefix}{kind}:{name}"

    def ping(self) -> None:
        try:
            self.client.ping()
        except self._redis_errors as exc:
            self._fail("ping", exc)

    def close(self) -> None:
        """Close the connections of a client this store created; a client passed in stays open."""
        if self._owns_client:
            try:
                self.client.close()
                # A client from a redis+sentinel:// URL also holds one connection to each
                # sentinel it asked for the primary: those are this store's to close too.
                pool = getattr(self.client, "connection_pool", None)
                manager = getattr(pool, "sentinel_manager", None)
                for sentinel in getattr(manager, "sentinels", ()):
                    sentinel.close()
            except self._redis_errors as exc:
                self._fail("close", exc)

    def _fail(self, op: str, exc: BaseException) -> NoReturn:
        if isinstance(exc, StoreError):
            raise exc
        message = f"{type(exc).__name__}: {exc}"
        leaks = any(secret in message for secret in self._secrets)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        error = StoreError(f"Redis store {self.location}: {op} failed: {message}")
        # Neither the message nor the chained driver error may carry the password.
        raise error from (None if leaks else exc)
