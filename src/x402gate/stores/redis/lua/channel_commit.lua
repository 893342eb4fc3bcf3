-- ARGV[4..] id, token, charge, step, then the journal arguments (journal_prelude) recording
-- what the seller earned. Answers {'ok', fields} or {'none', {}}.
local id, token, charge, step = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local s = redis.call('HMGET', CH, 'step_token', 'step_base', 'step_max_claimable',
                     'step_signature')
if s[1] ~= token then return {'none', {}} end
local room = sub(s[3], s[2])
if cmp(step, room) > 0 then step = room end
if cmp(charge, step) > 0 then charge = step end
redis.call('HSET', CH, 'charged', add(s[2], step), 'earned', add(earned(), charge),
           'max_claimable', s[3], 'signature', s[4], 'last_request_at', NOW_TEXT)
clear_step()
reindex(id)
journal_write(8, charge)
return answer('ok')
