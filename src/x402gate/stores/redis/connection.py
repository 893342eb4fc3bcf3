"""The Redis store's client: building it, failing safely, and the key spaces it uses.

Every part of the Redis store (:mod:`.replay`, :mod:`.idempotency`, :mod:`.credit`,
:mod:`.in_flight`) builds on :class:`RedisConnection`: it owns the ``redis.Redis`` client,
registers each part's scripts (:meth:`RedisConnection._register_scripts`) and turns driver errors
into :class:`~x402gate.errors.StoreError` without the password (:meth:`RedisConnection._fail`).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn

from ...errors import ConfigurationError, StoreError
from ..base import Store
from ..records import CREDIT_RECORD_RETENTION_SECONDS
from ..urls import redact_url

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["DEFAULT_SOCKET_TIMEOUT", "EXPIRY_GRACE_SECONDS", "RedisConnection", "text"]

EXPIRY_GRACE_SECONDS = 60
"""How long past ``expires_at`` Redis keeps an entry, to absorb clock skew between hosts."""

DEFAULT_SOCKET_TIMEOUT = 5.0


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
        client: redis_module.Redis | None = None,
        key_prefix: str = "x402gate:",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("RedisStore needs exactly one of url= or client=")
        redis = _import_redis()
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        if client is None:
            assert url is not None
            client = self._client_from_url(redis, url, socket_timeout)
            self._owns_client = True
            self.location = redact_url(url)
        else:
            if not isinstance(client, redis.Redis):
                raise ConfigurationError(
                    "RedisStore needs a synchronous redis.Redis client, "
                    f"got {type(client).__name__}"
                )
            self._owns_client = False
            kwargs = client.connection_pool.connection_kwargs
            self.location = str(
                kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            )
        password = client.connection_pool.connection_kwargs.get("password")
        self._secret: str | None = str(password) if password else None
        self.client: redis_module.Redis = client
        self.key_prefix = key_prefix
        self._register_scripts(client)

    def _register_scripts(self, client: redis_module.Redis) -> None:
        """Register the scripts of each part of the store; parts extend it and call super()."""

    @staticmethod
    def _client_from_url(redis: Any, url: str, socket_timeout: float) -> Any:
        parts = urllib.parse.urlsplit(url)
        db = parts.path.strip("/")
        if parts.scheme.lower() in ("redis", "rediss") and db and not db.isdigit():
            raise ConfigurationError(
                f"Redis store URL {redact_url(url)!r}: the path must be a database number"
            )
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
            pool = client.connection_pool
            # Building (not connecting) one connection finds options redis-py does not know,
            # which it would otherwise only report on the first request.
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"Redis store URL {redact_url(url)!r} is not usable: {exc}"
            ) from None
        return client

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, key_prefix={self.key_prefix!r})"

    def _credit(self, op: str, script: Any, keys: list[str], now: float, *args: object) -> Any:
        """Run a credit script with the prelude's arguments; driver errors become StoreError."""
        prefix = f"{self.key_prefix}credit:"
        keep_ms = (CREDIT_RECORD_RETENTION_SECONDS + EXPIRY_GRACE_SECONDS) * 1000
        try:
            return script(keys=keys, args=[prefix, repr(float(now)), keep_ms, *args])
        except self._redis_errors as exc:
            self._fail(op, exc)

    def _credit_key(self, kind: str, name: str) -> str:
        return f"{self.key_prefix}credit:{kind}:{name}"

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
            except self._redis_errors as exc:
                self._fail("close", exc)

    def _fail(self, op: str, exc: BaseException) -> NoReturn:
        message = f"{type(exc).__name__}: {exc}"
        secret = self._secret
        leaks = secret is not None and secret in message
        if secret is not None and leaks:
            message = message.replace(secret, "***")
        error = StoreError(f"Redis store {self.location}: {op} failed: {message}")
        # Neither the message nor the chained driver error may carry the password.
        raise error from (None if leaks else exc)
