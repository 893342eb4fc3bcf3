-- KEYS[1] entry; ARGV token, new state. The TTL is left as it is.
local entry = redis.call('HMGET', KEYS[1], 'state', 'token')
if entry[2] == ARGV[1] and (entry[1] == 'held' or entry[1] == ARGV[2]) then
    redis.call('HSET', KEYS[1], 'state', ARGV[2])
    return 1
end
return 0
