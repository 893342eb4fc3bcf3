-- ARGV[4..] token, base, max_claimable, signature, expires_at. Answers {outcome, fields}.
local token, base, ceiling, signature, expires_at = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local cur = redis.call('HMGET', CH, 'charged', 'balance', 'step_token', 'step_expires_at')
if not cur[1] then return {'unknown', {}} end
if cur[3] then
    if cur[3] == token then return answer('started') end
    if tonumber(cur[4]) > NOW then return answer('busy') end
    clear_step()  -- forfeited: its process is presumed dead
end
if base ~= cur[1] then return answer('mismatch') end
if cmp(ceiling, cur[2]) > 0 then return answer('insufficient') end
redis.call('HSET', CH, 'step_token', token, 'step_base', base, 'step_max_claimable', ceiling,
           'step_signature', signature, 'step_expires_at', expires_at)
return answer('started')
