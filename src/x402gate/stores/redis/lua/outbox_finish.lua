-- KEYS due set, attempts hash, errors hash, dead set, dead info hash; ARGV member, then for a
-- dead row: now, error, the number of dead rows kept. Removes a pending row: delivered (no
-- more arguments) or dead (moved to the dead set with its attempts and error; the oldest dead
-- rows beyond the number kept are deleted).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local attempts = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] == nil then return 1 end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], attempts .. '\n' .. ARGV[3])
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if over > 0 then
    local old = redis.call('ZRANGE', KEYS[4], 0, over - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, over - 1)
    redis.call('HDEL', KEYS[5], unpack(old))
end
return 1
