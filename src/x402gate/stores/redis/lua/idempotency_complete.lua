-- Numbers computed in Lua are stored with %.17g, which reads back as the same double; Lua's own
-- number-to-string conversion keeps only 14 digits and would move expiry boundaries.
-- KEYS[1] entry; ARGV fingerprint, response (base64), now, grace_ms.
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
