"""``redis://``: a replay store and credit ledger shared by every host behind a load balancer.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, with redis-py's query options (``socket_timeout``, ...)
and ``key_prefix`` (default ``x402gate:``). An existing synchronous ``redis.Redis`` client may be
passed instead; the store then never closes it.

Each entry is one hash, ``<prefix>replay:<key>`` for claims (a claim whose answer is on the way
has the state ``sending`` and its last sign of life in ``alive_at``) and ``<prefix>idem:<id>``
for payment identifiers. Every check-and-set is one Lua script, which Redis runs atomically; scripts
are sent once and then called by SHA (redis-py's ``register_script`` reloads them after a
``SCRIPT FLUSH`` or a failover). Later concerns (credit) get their own key spaces under the
prefix and their own scripts. Stored responses are base64 text, so that a client built with
``decode_responses=True`` reads them back intact.

Credit ledger, under ``<prefix>credit:``: a hash per account (``acct:<account>``: available,
reserved, topped_up, charged), a hash per top-up ref (``topup:<ref>``) and per reservation
(``res:<id>``), a sorted set of each account's held reservations by ``expires_at``
(``held:<account>``) and one of all of them (``expiry``) for reconciling. Amounts are decimal
text and the scripts add and compare them digit by digit: Lua numbers are doubles, exact only up
to 2**53, and ``HINCRBY`` stops at 2**63, while the ledger holds any ``uint256``. A script
reaches keys it reads from another key (the reservations of an account), so the ledger needs one
Redis server (with replicas), not a Redis Cluster. Accounts, refs and held reservations never
expire; finished reservations expire :data:`~x402gate.stores.base.CREDIT_RECORD_RETENTION_SECONDS`
after their ``expires_at``. Configure Redis without eviction (``maxmemory-policy noeviction``)
and with persistence (AOF) when it holds money.

Payments in flight, under ``<prefix>credit:inflight:<account>``: one hash per payer account, a
field per payment (``amount|until_block|expires_at``), checked and added by one script with the
ledger's exact decimal arithmetic, so admissions of one payer from every host are serialized.
The hash's Redis TTL follows its longest-lived entry (plus the grace below).

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
    CREDIT_RECORD_RETENTION_SECONDS,
    IN_FLIGHT_UNSETTLED,
    MAX_CREDIT_AMOUNT,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    IdempotencyOutcome,
    IdempotencyResult,
    Store,
    check_block,
    check_credit_account,
    check_credit_amount,
    check_credit_id,
    check_credit_reserve,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
    check_in_flight_admit,
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
    if entry[1] == 'used' or entry[1] == 'sending' then return 'used' end
    if entry[2] ~= ARGV[1] then return 'bound_elsewhere' end
    if entry[1] == 'held' and entry[4] ~= ARGV[2] then return 'in_flight' end
    if tonumber(entry[3]) > tonumber(expires_at) then expires_at = entry[3] end
else
    -- A new entry: nothing of an expired one carries over (its last recovery check).
    redis.call('HDEL', KEYS[1], 'checked_at', 'alive_at')
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

# KEYS[1] entry; ARGV token, now ('' marks the answer complete). The TTL is left as it is.
_MARK_USED = """
local entry = redis.call('HMGET', KEYS[1], 'state', 'token', 'alive_at')
if entry[2] ~= ARGV[1] or not (entry[1] == 'held' or entry[1] == 'sending'
                               or entry[1] == 'used') then
    return 0
end
if ARGV[2] == '' then
    redis.call('HSET', KEYS[1], 'state', 'used')
elseif entry[1] ~= 'used' then
    local alive_at = ARGV[2]
    if entry[3] and tonumber(entry[3]) > tonumber(alive_at) then alive_at = entry[3] end
    redis.call('HSET', KEYS[1], 'state', 'sending', 'alive_at', alive_at)
end
return 1
"""

# KEYS[1] entry; ARGV resource, now, min_interval, answer_grace ('' for none). Answers the
# holder's token or false.
_RECOVERY_CHECK = """
local entry = redis.call('HMGET', KEYS[1], 'state', 'resource', 'expires_at', 'token',
                         'checked_at', 'alive_at')
local now = tonumber(ARGV[2])
if entry[2] ~= ARGV[1] or not entry[3] or tonumber(entry[3]) <= now then return false end
if entry[1] == 'sending' then
    if ARGV[4] == '' or now < tonumber(entry[6] or '0') + tonumber(ARGV[4]) then return false end
elseif entry[1] ~= 'held' then
    return false
end
if entry[5] and now < tonumber(entry[5]) + tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], 'checked_at', ARGV[2])
return entry[4]
"""

# KEYS[1] entry; ARGV holder, token. The TTL is left as it is.
_TAKE_OVER = """
local entry = redis.call('HMGET', KEYS[1], 'state', 'token')
if (entry[1] == 'held' and (entry[2] == ARGV[1] or entry[2] == ARGV[2]))
   or (entry[1] == 'sending' and entry[2] == ARGV[1]) then
    redis.call('HSET', KEYS[1], 'token', ARGV[2], 'state', 'held')
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

# -- credit ledger ---------------------------------------------------------------------------
# Every credit script starts with this prelude. ARGV[1] is the key prefix of the ledger
# (``<prefix>credit:``), ARGV[2] the caller's now, ARGV[3] how long (ms) a finished reservation
# is kept past its expires_at; the script's own arguments follow from ARGV[4].
_CREDIT_PRELUDE = """
local P = ARGV[1]
local NOW_TEXT = ARGV[2]
local NOW = tonumber(NOW_TEXT)
local KEEP_MS = tonumber(ARGV[3])
local EXPIRY = P .. 'expiry'

-- Canonical non-negative decimal strings ('0', '12', never '012'), compared and added digit
-- by digit: exact for any size.
local function cmp(a, b)
    if #a ~= #b then return #a < #b and -1 or 1 end
    for i = 1, #a do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y and -1 or 1 end
    end
    return 0
end

local function add(a, b)
    local out, carry, i, j = {}, 0, #a, #b
    while i > 0 or j > 0 or carry > 0 do
        local d = carry
        if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
        if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
        if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
        out[#out + 1] = string.char(48 + d)
    end
    return string.reverse(table.concat(out))
end

local function sub(a, b)
    if cmp(a, b) < 0 then error('x402gate: credit ledger would go negative') end
    local out, borrow, i, j = {}, 0, #a, #b
    while i > 0 do
        local d = string.byte(a, i) - 48 - borrow
        if j > 0 then d = d - (string.byte(b, j) - 48); j = j - 1 end
        if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
        out[#out + 1] = string.char(48 + d)
        i = i - 1
    end
    local text = string.gsub(string.reverse(table.concat(out)), '^0+', '')
    if text == '' then return '0' end
    return text
end

local function account_key(account) return P .. 'acct:' .. account end
local function held_key(account) return P .. 'held:' .. account end
local function res_key(id) return P .. 'res:' .. id end

-- A held reservation ends: the account gets back amount - charged, charged is taken.
local function finish(id, account, amount, state, charged, expires_at)
    local acct = account_key(account)
    local bal = redis.call('HMGET', acct, 'available', 'reserved', 'charged')
    if not bal[2] or cmp(bal[2], amount) < 0 then
        error('x402gate: credit account ' .. account .. ' does not hold reservation ' .. id)
    end
    redis.call('HSET', acct, 'available', add(bal[1], sub(amount, charged)),
               'reserved', sub(bal[2], amount), 'charged', add(bal[3], charged))
    local res = res_key(id)
    redis.call('HSET', res, 'state', state, 'charged', charged, 'finished_at', NOW_TEXT)
    local left_ms = math.ceil((tonumber(expires_at) - NOW) * 1000)
    if left_ms < 0 then left_ms = 0 end
    redis.call('PEXPIRE', res, left_ms + KEEP_MS)
    redis.call('ZREM', held_key(account), id)
    redis.call('ZREM', EXPIRY, id)
end

-- Every held reservation of the account whose expires_at has come returns to available.
local function expire_held(account)
    local ids = redis.call('ZRANGEBYSCORE', held_key(account), '-inf', NOW_TEXT)
    for _, id in ipairs(ids) do
        local r = redis.call('HMGET', res_key(id), 'amount', 'expires_at')
        if r[1] then
            finish(id, account, r[1], 'expired', '0', r[2])
        else
            -- The entry was deleted behind the ledger's back (eviction?): its amount is
            -- unknown, so it stays reserved, but it must not break every later operation.
            redis.call('ZREM', held_key(account), id)
            redis.call('ZREM', EXPIRY, id)
        end
    end
end
"""

# ARGV[4..] account, amount, ref, max total. {'conflict'}, {'overflow'} or {'ok', available}.
_CREDIT_TOPUP = (
    _CREDIT_PRELUDE
    + """
local account, amount, ref = ARGV[4], ARGV[5], ARGV[6]
local topup = P .. 'topup:' .. ref
local applied = redis.call('HMGET', topup, 'account', 'amount')
if applied[1] and (applied[1] ~= account or applied[2] ~= amount) then return {'conflict'} end
expire_held(account)
local acct = account_key(account)
local bal = redis.call('HMGET', acct, 'available', 'topped_up')
local available, topped_up = bal[1] or '0', bal[2] or '0'
if applied[1] then return {'ok', available} end
topped_up = add(topped_up, amount)
if cmp(topped_up, ARGV[7]) > 0 then return {'overflow'} end
available = add(available, amount)
redis.call('HSET', acct, 'available', available, 'topped_up', topped_up)
redis.call('HSETNX', acct, 'reserved', '0')
redis.call('HSETNX', acct, 'charged', '0')
redis.call('HSET', topup, 'account', account, 'amount', amount, 'applied_at', NOW_TEXT)
return {'ok', available}
"""
)

# ARGV[4..] account, amount, reservation id, expires_at. 1 reserved, 0 not.
_CREDIT_RESERVE = (
    _CREDIT_PRELUDE
    + """
local account, amount, id, expires_at = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
expire_held(account)
local res = res_key(id)
local known = redis.call('HMGET', res, 'account', 'amount', 'state', 'expires_at')
if known[3] then
    if known[3] == 'held' and tonumber(known[4]) > NOW and known[1] == account
            and known[2] == amount then
        return 1
    end
    return 0
end
local acct = account_key(account)
local bal = redis.call('HMGET', acct, 'available', 'reserved')
if not bal[1] or cmp(bal[1], amount) < 0 then return 0 end
redis.call('HSET', acct, 'available', sub(bal[1], amount), 'reserved', add(bal[2], amount))
redis.call('HSET', res, 'account', account, 'amount', amount, 'state', 'held', 'charged', '0',
           'expires_at', expires_at, 'created_at', NOW_TEXT)
redis.call('ZADD', held_key(account), expires_at, id)
redis.call('ZADD', EXPIRY, expires_at, id)
return 1
"""
)

# ARGV[4..] reservation id, then charge (commit) or nothing (release).
# Commit answers the charge as text; release answers 1 or 0.
_CREDIT_FINISH = (
    _CREDIT_PRELUDE
    + """
local id, charge = ARGV[4], ARGV[5]
local r = redis.call('HMGET', res_key(id), 'account', 'amount', 'state', 'expires_at', 'charged')
local live = false
if r[3] == 'held' then
    expire_held(r[1])
    live = tonumber(r[4]) > NOW
end
if charge then
    if not live then
        if r[3] == 'committed' then return r[5] end
        if r[3] == 'held' or r[3] == 'expired' then
            -- The answer outlived its hold (now expired): the charge is still owed, but only
            -- what is available now can pay it (the rest may be held by other requests).
            local acct = account_key(r[1])
            local bal = redis.call('HMGET', acct, 'available', 'charged')
            local late = charge
            if cmp(late, r[2]) > 0 then late = r[2] end
            if not bal[1] then late = '0'
            elseif cmp(late, bal[1]) > 0 then late = bal[1] end
            if bal[1] then
                redis.call('HSET', acct, 'available', sub(bal[1], late),
                           'charged', add(bal[2] or '0', late))
            end
            redis.call('HSET', res_key(id), 'state', 'committed', 'charged', late)
            return late
        end
        return '0'
    end
    if cmp(charge, r[2]) > 0 then charge = r[2] end
    finish(id, r[1], r[2], 'committed', charge, r[4])
    return charge
end
if not live then
    if r[3] == 'released' then return 1 end
    return 0
end
finish(id, r[1], r[2], 'released', '0', r[4])
return 1
"""
)

# ARGV[4..] reservation id, expires_at. 1 when the live held reservation now lasts at least
# until expires_at, 0 otherwise (nothing changed).
_CREDIT_EXTEND = (
    _CREDIT_PRELUDE
    + """
local id, expires_at = ARGV[4], ARGV[5]
local r = redis.call('HMGET', res_key(id), 'account', 'state', 'expires_at')
if r[2] ~= 'held' then return 0 end
expire_held(r[1])
if tonumber(r[3]) <= NOW then return 0 end
if tonumber(expires_at) > tonumber(r[3]) then
    redis.call('HSET', res_key(id), 'expires_at', expires_at)
    redis.call('ZADD', held_key(r[1]), expires_at, id)
    redis.call('ZADD', EXPIRY, expires_at, id)
end
return 1
"""
)

# ARGV[4] account. {available, reserved, topped_up, charged}, nil for an unknown account.
_CREDIT_BALANCE = (
    _CREDIT_PRELUDE
    + """
expire_held(ARGV[4])
return redis.call('HMGET', account_key(ARGV[4]), 'available', 'reserved', 'topped_up', 'charged')
"""
)

# ARGV[4] batch size. {moved, looked at}.
_CREDIT_RECONCILE = (
    _CREDIT_PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', NOW_TEXT, 'LIMIT', 0, tonumber(ARGV[4]))
local moved = 0
for _, id in ipairs(ids) do
    local r = redis.call('HMGET', res_key(id), 'account', 'amount', 'expires_at', 'state')
    if r[4] == 'held' then
        finish(id, r[1], r[2], 'expired', '0', r[3])
        moved = moved + 1
    else
        redis.call('ZREM', EXPIRY, id)
    end
end
return {moved, #ids}
"""
)

_RECONCILE_BATCH = 500

# -- payments in flight ----------------------------------------------------------------------
# One hash per account, KEYS[1] = ``<prefix>credit:inflight:<account>``: field entry id, value
# ``amount|until_block|expires_at``. The scripts share the ledger's prelude for its exact
# decimal arithmetic; block numbers stay far below 2**53 and compare as Lua numbers.
_IN_FLIGHT_PRELUDE = """
local function parse(value)
    return string.match(value, '^(%d+)|(%d+)|(.+)$')
end
local function keep(key, expires_at, grace_ms)
    local want = math.ceil((expires_at - NOW) * 1000) + grace_ms
    if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
end
"""

# ARGV[4..] id, amount, balance, block, expires_at, unsettled marker, grace_ms. 1 admitted.
_IN_FLIGHT_ADMIT = (
    _CREDIT_PRELUDE
    + _IN_FLIGHT_PRELUDE
    + """
local id, amount, balance = ARGV[4], ARGV[5], ARGV[6]
local block, expires_at = tonumber(ARGV[7]), ARGV[8]
local all = redis.call('HGETALL', KEYS[1])
local held = '0'
for i = 1, #all, 2 do
    local a, u, e = parse(all[i + 1])
    if tonumber(e) <= NOW then
        redis.call('HDEL', KEYS[1], all[i])
    elseif all[i] == id then
        if a == amount then return 1 end
        return 0
    elseif tonumber(u) > block then
        held = add(held, a)
    end
end
if cmp(add(held, amount), balance) > 0 then return 0 end
redis.call('HSET', KEYS[1], id, amount .. '|' .. ARGV[9] .. '|' .. expires_at)
keep(KEYS[1], tonumber(expires_at), tonumber(ARGV[10]))
return 1
"""
)

# ARGV[4..] id, block, expires_at, grace_ms. 1 settled, 0 no live entry.
_IN_FLIGHT_SETTLE = (
    _CREDIT_PRELUDE
    + _IN_FLIGHT_PRELUDE
    + """
local value = redis.call('HGET', KEYS[1], ARGV[4])
if not value then return 0 end
local a, u, e = parse(value)
if tonumber(e) <= NOW then
    redis.call('HDEL', KEYS[1], ARGV[4])
    return 0
end
redis.call('HSET', KEYS[1], ARGV[4], a .. '|' .. ARGV[5] .. '|' .. ARGV[6])
keep(KEYS[1], tonumber(ARGV[6]), tonumber(ARGV[7]))
return 1
"""
)

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
    supports_credit: ClassVar[bool] = True
    supports_in_flight: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True

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
        self._recovery_check_script = client.register_script(_RECOVERY_CHECK)
        self._mark_used_script = client.register_script(_MARK_USED)
        self._take_over_script = client.register_script(_TAKE_OVER)
        self._idem_begin_script = client.register_script(_IDEM_BEGIN)
        self._idem_complete_script = client.register_script(_IDEM_COMPLETE)
        self._idem_abandon_script = client.register_script(_IDEM_ABANDON)
        self._credit_topup_script = client.register_script(_CREDIT_TOPUP)
        self._credit_reserve_script = client.register_script(_CREDIT_RESERVE)
        self._credit_finish_script = client.register_script(_CREDIT_FINISH)
        self._credit_balance_script = client.register_script(_CREDIT_BALANCE)
        self._credit_extend_script = client.register_script(_CREDIT_EXTEND)
        self._credit_reconcile_script = client.register_script(_CREDIT_RECONCILE)
        self._in_flight_admit_script = client.register_script(_IN_FLIGHT_ADMIT)
        self._in_flight_settle_script = client.register_script(_IN_FLIGHT_SETTLE)

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

    def mark_used(self, key: str, token: str, now: float | None = None) -> bool:
        try:
            done = self._mark_used_script(
                keys=[self._key(key)], args=[token, "" if now is None else repr(float(now))]
            )
        except self._redis_errors as exc:
            self._fail("mark_used", exc)
        return int(done) == 1

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        grace = "" if answer_grace is None else repr(float(answer_grace))
        try:
            answer = self._recovery_check_script(
                keys=[self._key(key)],
                args=[resource, repr(float(now)), repr(float(min_interval)), grace],
            )
        except self._redis_errors as exc:
            self._fail("recovery_check", exc)
        return None if answer is None else _text(answer)

    def take_over(self, key: str, holder: str, token: str) -> bool:
        try:
            done = self._take_over_script(keys=[self._key(key)], args=[holder, token])
        except self._redis_errors as exc:
            self._fail("take_over", exc)
        return int(done) == 1

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

    # -- credit ledger ----------------------------------------------------------------------

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

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")
        answer = self._credit(
            "credit_topup",
            self._credit_topup_script,
            [self._credit_key("acct", account), self._credit_key("topup", ref)],
            now,
            account,
            str(amount),
            ref,
            str(MAX_CREDIT_AMOUNT),
        )
        outcome = _text(answer[0])
        if outcome == "conflict":
            raise ValueError(
                f"credit top-up ref {ref!r:.80} was already applied to another account or amount"
            )
        if outcome == "overflow":
            raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
        return int(answer[1])

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)
        answer = self._credit(
            "credit_reserve",
            self._credit_reserve_script,
            [self._credit_key("acct", account), self._credit_key("res", reservation_id)],
            now,
            account,
            str(amount),
            reservation_id,
            repr(float(expires_at)),
        )
        return int(answer) == 1

    def credit_commit(self, reservation_id: str, charge: int, now: float) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)
        answer = self._credit(
            "credit_commit",
            self._credit_finish_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
            str(charge),
        )
        return int(answer)

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        answer = self._credit(
            "credit_release",
            self._credit_finish_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
        )
        return int(answer) == 1

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        answer = self._credit(
            "credit_extend",
            self._credit_extend_script,
            [self._credit_key("res", reservation_id)],
            now,
            reservation_id,
            repr(float(expires_at)),
        )
        return int(answer) == 1

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)
        answer = self._credit(
            "credit_balance",
            self._credit_balance_script,
            [self._credit_key("acct", account)],
            now,
            account,
        )
        return CreditBalance(*(0 if value is None else int(value) for value in answer))

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        try:
            row = self.client.hmget(
                self._credit_key("res", reservation_id),
                ["account", "amount", "state", "charged", "expires_at"],
            )
        except self._redis_errors as exc:
            self._fail("credit_reservation", exc)
        if row[2] is None:
            return None
        account, amount, state, charged, expires = (_text(value) for value in row)
        expires_at = float(expires)
        if state == "held" and now >= expires_at:
            state = "expired"
        return CreditReservation(account, int(amount), state, int(charged), expires_at)

    def credit_reconcile(self, now: float) -> int:
        moved = 0
        while True:
            answer = self._credit(
                "credit_reconcile",
                self._credit_reconcile_script,
                [f"{self.key_prefix}credit:expiry"],
                now,
                _RECONCILE_BATCH,
            )
            moved += int(answer[0])
            if int(answer[1]) < _RECONCILE_BATCH:
                return moved

    # -- payments in flight -------------------------------------------------------------------

    def in_flight_admit(
        self,
        account: str,
        entry_id: str,
        amount: int,
        balance: int,
        block: int,
        expires_at: float,
        now: float,
    ) -> bool:
        check_in_flight_admit(account, entry_id, amount, balance, block, expires_at)
        if "|" in entry_id:
            raise ValueError("in-flight entry id must not contain '|'")
        answer = self._credit(
            "in_flight_admit",
            self._in_flight_admit_script,
            [self._credit_key("inflight", account)],
            now,
            entry_id,
            str(amount),
            str(balance),
            str(block),
            repr(float(expires_at)),
            str(IN_FLIGHT_UNSETTLED),
            EXPIRY_GRACE_SECONDS * 1000,
        )
        return int(answer) == 1

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)
        answer = self._credit(
            "in_flight_settle",
            self._in_flight_settle_script,
            [self._credit_key("inflight", account)],
            now,
            entry_id,
            str(block),
            repr(float(expires_at)),
            EXPIRY_GRACE_SECONDS * 1000,
        )
        return int(answer) == 1

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        try:
            return int(self.client.hdel(self._credit_key("inflight", account), entry_id)) == 1
        except self._redis_errors as exc:
            self._fail("in_flight_release", exc)

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        try:
            entries = self.client.hgetall(self._credit_key("inflight", account))
        except self._redis_errors as exc:
            self._fail("in_flight_total", exc)
        total = 0
        for value in entries.values():
            amount, until, expires_at = _text(value).split("|")
            if int(until) > block and float(expires_at) > now:
                total += int(amount)
        return total

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
