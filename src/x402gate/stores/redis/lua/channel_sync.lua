-- ARGV[4..] id, config, balance, total_claimed, withdraw_requested_at, refund_nonce.
local id, config, balance, claimed = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local withdraw, nonce = ARGV[8], ARGV[9]
local cur = redis.call('HMGET', CH, 'config', 'total_claimed', 'charged', 'refund_nonce',
                       'synced_at')
if not cur[1] then
    redis.call('HSET', CH, 'id', id, 'config', config, 'balance', balance,
               'total_claimed', claimed, 'charged', claimed, 'earned', claimed,
               'max_claimable', '0', 'signature', '0x', 'withdraw_requested_at', withdraw,
               'refund_nonce', nonce, 'synced_at', NOW_TEXT, 'last_request_at', '0')
    return answer('ok')
end
if cur[1] ~= config then return {'config', {}} end
claimed = max(cur[2], claimed)
-- Claimed on chain is earned and charged: a store that lost its state learns it back.
local earn = max(earned(), claimed)
local charged = max(cur[3], claimed)
local synced = cur[5]
if NOW > tonumber(synced) then synced = NOW_TEXT end
local step_base = redis.call('HGET', CH, 'step_base')
if step_base and cmp(step_base, charged) < 0 then
    clear_step()  -- signed on an amount the chain has passed: forfeited, like a lost state
end
redis.call('HSET', CH, 'balance', balance, 'total_claimed', claimed,
           'charged', charged, 'earned', earn, 'withdraw_requested_at', withdraw,
           'refund_nonce', max(cur[4], nonce), 'synced_at', synced)
reindex(id)
return answer('ok')
