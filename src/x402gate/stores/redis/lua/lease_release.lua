-- Free a lease held by ARGV[1] (see x402gate.stores.leases).
-- KEYS[1] the lease hash. 1 when it was ARGV[1]'s (now deleted), else 0.
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
