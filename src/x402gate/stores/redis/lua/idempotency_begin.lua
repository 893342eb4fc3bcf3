-- KEYS[1] entry; ARGV fingerprint, ttl_seconds, expires_at (now + ttl, from the caller), now,
-- grace_ms. Answers {outcome} or {'replay', response}, in the order documented in base.py.
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
