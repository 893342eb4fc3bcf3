-- KEYS[1] rows hash, KEYS[2] time index; ARGV cutoff time ('' for none), rows kept ('' for no
-- limit), most rows deleted by this call. Deletes the oldest rows older than the cutoff, then
-- the oldest beyond the count; answers how many (the caller repeats while it gets the most).
local most = tonumber(ARGV[3])
local deleted = 0
local function drop(ids)
    if #ids > 0 then
        redis.call('HDEL', KEYS[1], unpack(ids))
        redis.call('ZREM', KEYS[2], unpack(ids))
        deleted = deleted + #ids
    end
end
if ARGV[1] ~= '' then
    drop(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, most))
end
if ARGV[2] ~= '' and deleted < most then
    local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
    if over > most - deleted then over = most - deleted end
    if over > 0 then drop(redis.call('ZRANGE', KEYS[2], 0, over - 1)) end
end
return deleted
