-- ARGV[4..] account, amount, ref, max total. {'conflict'}, {'overflow'} or {'ok', available}.
local account, amount, ref = ARGV[4], ARGV[5], ARGV[6]
local topup = P .. 'topup:' .. ref
local applied = redis.call('HMGET', topup, 'account', 'amount')
if applied[1] and (applied[1] ~= account or applied[2] ~= amount) then return {'conflict'} end
expire_held(account)
local acct = account_key(account)
local bal = redis.call('HMGET', acct, 'available', 'topped_up')
local available, topped_up = bal[1] or '0', bal[2] or '0'
if applied[1] then return {'ok', available} end
topped_up = add(topped_up, amount)
if cmp(topped_up, ARGV[7]) > 0 then return {'overflow'} end
available = add(available, amount)
redis.call('HSET', acct, 'available', available, 'topped_up', topped_up)
redis.call('HSETNX', acct, 'reserved', '0')
redis.call('HSETNX', acct, 'charged', '0')
redis.call('HSET', topup, 'account', account, 'amount', amount, 'applied_at', NOW_TEXT)
return {'ok', available}
