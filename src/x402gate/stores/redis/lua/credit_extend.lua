-- ARGV[4..] reservation id, expires_at. 1 when the live held reservation now lasts at least
-- until expires_at, 0 otherwise (nothing changed).
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
