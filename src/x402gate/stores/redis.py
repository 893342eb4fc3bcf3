"""``redis://``: a replay store shared by every host behind a load balancer.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, with redis-py's query options (``socket_timeout``, ...)
and ``key_prefix`` (default ``x402gate:``). An existing synchronous ``redis.Redis`` client may be
passed instead; the store then never closes it.

Each entry is one hash, ``<prefix>replay:<key>`` for claims and ``<prefix>idem:<id>`` for
payment identifiers. Every check-and-set is one Lua script, which Redis runs atomically; scripts
are sent once and then called by SHA (redis-py's ``register_script`` reloads them after a
``SCRIPT FLUSH`` or a failover). Later concerns (credit) get their own key spaces under the
prefix and their own scripts. Stored responses are base64 text, so that a client built with
``decode_responses=True`` reads them back intact.

Expiry: the scripts judge liveness with the caller's ``now`` against the stored ``expires_at``,
exactly like the other backends. The key's Redis TTL only collects garbage: it is set relative to
the caller's clock (``expires_at - now``) plus :data:`EXPIRY_GRACE_SECONDS`, so clock skew between
application hosts and the Redis host cannot make an entry vanish while a host still treats the
authorization as valid, and an injected clock in tests behaves like the real one.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from ..errors import ConfigurationError, StoreError
from .base import (
    ClaimResult,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
)
from .registry import redact_url, register_scheme

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["EXPIRY_GRACE_SECONDS", "RedisStore"]

EXPIRY_GRACE_SECONDS = 60
"""How long past ``expires_at`` Redis keeps an entry, to absorb clock skew between hosts."""

DEFAULT_SOCKET_TIMEOUT = 5.0

# KEYS[1] entry; ARGV resource, token, expires_at, now, grace_ms.
# Answers in the order documented in base.py: used, bound_elsewhere, in_flight, claimed.
_CLAIM = """
local entry = redis.call('HMGET', KEYS[1], 'state', 'resource', 'expires_at', 'token')
local now = tonumber(ARGV[4])
local expires_at = ARGV[3]
if entry[1] and tonumber(entry[3]) > now then
    if entry[1] == 'used' then return 'used' end
    if entry[2] ~= ARGV[1] then return 'bound_elsewhere' end
    if entry[1] == 'held' and entry[4] ~= ARGV[2] then return 'in_flight' end
    if tonumber(entry[3]) > tonumber(expires_at) then expires_at = entry[3] end
end
local ttl_ms = math.ceil((tonumber(expires_at) - now) * 1000) + tonumber(ARGV[5])
if ttl_ms <= 0 then
    -- Already expired (and past the grace): nothing worth keeping.
    redis.call('DEL', KEYS[1])
    return 'claimed'
end
redis.call('HSET', KEYS[1], 'state', 'held', 'resource', ARGV[1], 'token', ARGV[2],
           'expires_at', expires_at)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return 'claimed'
"""

# KEYS[1] entry; ARGV token, new state. The TTL is left as it is.
_FINISH = """
local entry = redis.call('HMGET', KEYS[1], 'state', 'token')
if entry[2] == ARGV[1] and (entry[1] == 'held' or entry[1] == ARGV[2]) then
    redis.call('HSET', KEYS[1], 'state', ARGV[2])
    return 1
end
return 0
"""

# Numbers computed in Lua are stored with %.17g, which reads back as the same double; Lua's own
# number-to-string conversion keeps only 14 digits and would move expiry boundaries.

# KEYS[1] entry; ARGV fingerprint, ttl_seconds, expires_at (now + ttl, from the caller), now,
# grace_ms. Answers {outcome} or {'replay', response}, in the order documented in base.py.
_IDEM_BEGIN = """
local entry = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'response', 'expires_at')
local now = tonumber(ARGV[4])
if entry[1] and tonumber(entry[4]) > now then
    if entry[1] ~= ARGV[1] then return {'conflict'} end
    if entry[2] == 'done' then return {'replay', entry[3]} end
    return {'in_progress'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'pending', 'ttl', ARGV[2],
           'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[3]) - now) * 1000) + tonumber(ARGV[5]))
return {'new'}
"""

# KEYS[1] entry; ARGV fingerprint, response (base64), now, grace_ms.
_IDEM_COMPLETE = """
local entry = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'expires_at', 'ttl')
local now = tonumber(ARGV[3])
if not entry[1] or entry[1] ~= ARGV[1] or tonumber(entry[3]) <= now then return 0 end
if entry[2] == 'done' then return 1 end
local expires_at = tonumber(entry[3])
local renewed = now + tonumber(entry[4])
if renewed > expires_at then expires_at = renewed end
redis.call('HSET', KEYS[1], 'state', 'done', 'response', ARGV[2],
           'expires_at', string.format('%.17g', expires_at))
redis.call('PEXPIRE', KEYS[1], math.ceil((expires_at - now) * 1000) + tonumber(ARGV[4]))
return 1
"""

# KEYS[1] entry; ARGV fingerprint.
_IDEM_ABANDON = """
local entry = redis.call('HMGET', KEYS[1], 'fingerprint', 'state')
if entry[1] == ARGV[1] and entry[2] == 'pending' then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""

_CLAIM_RESULTS = {result.value: result for result in ClaimResult}
_IDEM_OUTCOMES = {outcome.value: outcome for outcome in IdempotencyOutcome}


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "the Redis store needs the redis package: pip install 'x402gate[redis]'"
        ) from exc
    return redis


def _text(value: object) -> str:
    # Scripts answer bytes or str depending on the client's decode_responses.
    return value.decode() if isinstance(value, bytes) else str(value)


@register_scheme
class RedisStore(Store):
    """Replay store in Redis (one server, or a primary with replicas), atomic through Lua.

    Give either ``url`` or ``client``. ``socket_timeout`` applies to clients built from a URL
    unless the URL sets its own; without one a stalled server would hang requests forever.
    """

    scheme: ClassVar[str] = "redis"
    aliases: ClassVar[tuple[str, ...]] = ("rediss", "unix")
    blocking: ClassVar[bool] = True
    shared_across_processes: ClassVar[bool] = True
    supports_idempotency: ClassVar[bool] = True

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
        self._claim_script = client.register_script(_CLAIM)
        self._finish_script = client.register_script(_FINISH)
        self._idem_begin_script = client.register_script(_IDEM_BEGIN)
        self._idem_complete_script = client.register_script(_IDEM_COMPLETE)
        self._idem_abandon_script = client.register_script(_IDEM_ABANDON)

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

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, key_prefix={self.key_prefix!r})"

    def _key(self, key: str) -> str:
        return f"{self.key_prefix}replay:{key}"

    # -- replay -----------------------------------------------------------------------------

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        try:
            answer = self._claim_script(
                keys=[self._key(key)],
                args=[resource, token, expires_at, repr(float(now)), EXPIRY_GRACE_SECONDS * 1000],
            )
        except self._redis_errors as exc:
            self._fail("claim", exc)
        return _CLAIM_RESULTS[_text(answer)]

    def release(self, key: str, token: str) -> bool:
        return self._finish("release", key, token, "released")

    def mark_used(self, key: str, token: str) -> bool:
        return self._finish("mark_used", key, token, "used")

    def state(self, key: str, now: float) -> str | None:
        try:
            state, expires_at = self.client.hmget(self._key(key), ["state", "expires_at"])
        except self._redis_errors as exc:
            self._fail("state", exc)
        if state is None or expires_at is None or now >= float(expires_at):
            return None
        return _text(state)

    def _finish(self, op: str, key: str, token: str, new_state: str) -> bool:
        try:
            done = self._finish_script(keys=[self._key(key)], args=[token, new_state])
        except self._redis_errors as exc:
            self._fail(op, exc)
        return int(done) == 1

    # -- idempotency ------------------------------------------------------------------------

    def _idem_key(self, payment_id: str) -> str:
        return f"{self.key_prefix}idem:{payment_id}"

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)
        now = float(now)
        try:
            answer = self._idem_begin_script(
                keys=[self._idem_key(payment_id)],
                args=[
                    fingerprint,
                    ttl_seconds,
                    repr(now + ttl_seconds),
                    repr(now),
                    EXPIRY_GRACE_SECONDS * 1000,
                ],
            )
        except self._redis_errors as exc:
            self._fail("idempotency_begin", exc)
        outcome = _IDEM_OUTCOMES[_text(answer[0])]
        if outcome is IdempotencyOutcome.REPLAY:
            return IdempotencyResult(outcome, base64.b64decode(answer[1]))
        return IdempotencyResult(outcome)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        encoded = base64.b64encode(check_idempotency_response(response))
        try:
            done = self._idem_complete_script(
                keys=[self._idem_key(payment_id)],
                args=[fingerprint, encoded, repr(float(now)), EXPIRY_GRACE_SECONDS * 1000],
            )
        except self._redis_errors as exc:
            self._fail("idempotency_complete", exc)
        return int(done) == 1

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        try:
            done = self._idem_abandon_script(keys=[self._idem_key(payment_id)], args=[fingerprint])
        except self._redis_errors as exc:
            self._fail("idempotency_abandon", exc)
        return int(done) == 1

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        try:
            state, expires_at = self.client.hmget(
                self._idem_key(payment_id), ["state", "expires_at"]
            )
        except self._redis_errors as exc:
            self._fail("idempotency_state", exc)
        if state is None or expires_at is None or now >= float(expires_at):
            return None
        return _text(state)

    # -- plumbing ---------------------------------------------------------------------------

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
