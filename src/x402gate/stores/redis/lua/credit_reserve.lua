-- ARGV[4..] account, amount, reservation id, expires_at. 1 reserved, 0 not.
local account, amount, id, expires_at = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
expire_held(account)
local res = res_key(id)
local known = redis.call('HMGET', res, 'account', 'amount', 'state', 'expires_at')
if known[3] then
    if known[3] == 'held' and tonumber(known[4]) > NOW and known[1] == account
            and known[2] == amount then
        return 1
    end
    return 0
end
local acct = account_key(account)
local bal = redis.call('HMGET', acct, 'available', 'reserved')
if not bal[1] or cmp(bal[1], amount) < 0 then return 0 end
redis.call('HSET', acct, 'available', sub(bal[1], amount), 'reserved', add(bal[2], amount))
redis.call('HSET', res, 'account', account, 'amount', amount, 'state', 'held', 'charged', '0',
           'expires_at', expires_at, 'created_at', NOW_TEXT)
redis.call('ZADD', held_key(account), expires_at, id)
redis.call('ZADD', EXPIRY, expires_at, id)
return 1
