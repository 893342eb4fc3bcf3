-- KEYS[1] entry; ARGV resource, now, min_interval, answer_grace ('' for none). Answers the
-- holder's token or false.
local entry = redis.call('HMGET', KEYS[1], 'state', 'resource', 'expires_at', 'token',
                         'checked_at', 'alive_at')
local now = tonumber(ARGV[2])
if entry[2] ~= ARGV[1] or not entry[3] or tonumber(entry[3]) <= now then return false end
if entry[1] == 'sending' then
    if ARGV[4] == '' or now < tonumber(entry[6] or '0') + tonumber(ARGV[4]) then return false end
elseif entry[1] ~= 'held' then
    return false
end
if entry[5] and now < tonumber(entry[5]) + tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], 'checked_at', ARGV[2])
return entry[4]
