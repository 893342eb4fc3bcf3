-- ARGV[4..] id, block, expires_at, grace_ms. 1 settled, 0 no live entry.
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
