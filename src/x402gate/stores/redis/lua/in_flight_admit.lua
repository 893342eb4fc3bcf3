-- ARGV[4..] id, amount, balance, block, expires_at, unsettled marker, grace_ms. 1 admitted.
local id, amount, balance = ARGV[4], ARGV[5], ARGV[6]
local block, expires_at = tonumber(ARGV[7]), ARGV[8]
local all = redis.call('HGETALL', KEYS[1])
local held = '0'
for i = 1, #all, 2 do
    local a, u, e = parse(all[i + 1])
    if tonumber(e) <= NOW then
        redis.call('HDEL', KEYS[1], all[i])
    elseif all[i] == id then
        if a == amount then return 1 end
        return 0
    elseif tonumber(u) > block then
        held = add(held, a)
    end
end
if cmp(add(held, amount), balance) > 0 then return 0 end
redis.call('HSET', KEYS[1], id, amount .. '|' .. ARGV[9] .. '|' .. expires_at)
keep(KEYS[1], tonumber(expires_at), tonumber(ARGV[10]))
return 1
