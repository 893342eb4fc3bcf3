-- ARGV[4] batch size. {moved, looked at}.
local ids = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', NOW_TEXT, 'LIMIT', 0, tonumber(ARGV[4]))
local moved = 0
for _, id in ipairs(ids) do
    local r = redis.call('HMGET', res_key(id), 'account', 'amount', 'expires_at', 'state')
    if r[4] == 'held' then
        finish(id, r[1], r[2], 'expired', '0', r[3])
        moved = moved + 1
    else
        redis.call('ZREM', EXPIRY, id)
    end
end
return {moved, #ids}
