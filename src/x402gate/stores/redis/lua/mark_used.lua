-- KEYS[1] entry; ARGV token, now ('' marks the answer complete), then the journal arguments
-- (journal_prelude) with the row's amount at ARGV[10]. The TTL is left as it is.
local entry = redis.call('HMGET', KEYS[1], 'state', 'token', 'alive_at')
if entry[2] ~= ARGV[1] or not (entry[1] == 'held' or entry[1] == 'sending'
                               or entry[1] == 'used') then
    return 0
end
if ARGV[2] == '' then
    redis.call('HSET', KEYS[1], 'state', 'used')
elseif entry[1] ~= 'used' then
    local alive_at = ARGV[2]
    if entry[3] and tonumber(entry[3]) > tonumber(alive_at) then alive_at = entry[3] end
    redis.call('HSET', KEYS[1], 'state', 'sending', 'alive_at', alive_at)
end
journal_write(3, ARGV[10] or '')
return 1
