-- KEYS[1] rows hash, KEYS[2] time index; ARGV cutoff time ('' for none), rows kept ('' for no
-- limit). Deletes older rows, then the oldest beyond the count; answers how many.
local deleted = 0
if ARGV[1] ~= '' then
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
    for i = 1, #old, 1000 do
        local batch = {unpack(old, i, math.min(i + 999, #old))}
        redis.call('HDEL', KEYS[1], unpack(batch))
        redis.call('ZREM', KEYS[2], unpack(batch))
    end
    deleted = deleted + #old
end
if ARGV[2] ~= '' then
    local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
    if over > 0 then
        local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
        for i = 1, #old, 1000 do
            local batch = {unpack(old, i, math.min(i + 999, #old))}
            redis.call('HDEL', KEYS[1], unpack(batch))
            redis.call('ZREM', KEYS[2], unpack(batch))
        end
        deleted = deleted + #old
    end
end
return deleted
