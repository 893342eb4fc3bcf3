-- ARGV[4..] token. 1 when the token held the step (now ended), else 0.
if redis.call('HGET', CH, 'step_token') ~= ARGV[4] then return 0 end
clear_step()
return 1
