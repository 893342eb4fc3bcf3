-- KEYS[1] entry; ARGV holder, token. The TTL is left as it is.
local entry = redis.call('HMGET', KEYS[1], 'state', 'token')
if (entry[1] == 'held' and (entry[2] == ARGV[1] or entry[2] == ARGV[2]))
   or (entry[1] == 'sending' and entry[2] == ARGV[1]) then
    redis.call('HSET', KEYS[1], 'token', ARGV[2], 'state', 'held')
    return 1
end
return 0
