-- KEYS[1] entry; ARGV resource, token, expires_at, now, grace_ms.
-- Answers in the order documented in base.py: used, bound_elsewhere, in_flight, claimed.
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
