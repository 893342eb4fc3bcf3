-- ARGV[4..] token, expires_at. 1 when the token holds the step (its expiry now the later one).
if redis.call('HGET', CH, 'step_token') ~= ARGV[4] then return 0 end
local old = redis.call('HGET', CH, 'step_expires_at')
if tonumber(ARGV[5]) > tonumber(old) then
    redis.call('HSET', CH, 'step_expires_at', ARGV[5])
end
return 1
