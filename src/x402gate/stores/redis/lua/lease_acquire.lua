-- Take or renew a lease (see x402gate.stores.leases).
-- KEYS[1] the lease hash; ARGV[1] holder, ARGV[2] now, ARGV[3] expires_at.
-- 1 when ARGV[1] holds the lease now, 0 when another holder's lease is live.
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] then
  local expires_at = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
  if expires_at and expires_at > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires_at', ARGV[3])
return 1
