-- KEYS[1] entry; ARGV fingerprint.
local entry = redis.call('HMGET', KEYS[1], 'fingerprint', 'state')
if entry[1] == ARGV[1] and entry[2] == 'pending' then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
