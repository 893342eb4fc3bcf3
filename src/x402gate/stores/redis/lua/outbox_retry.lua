-- KEYS due set, attempts hash, errors hash; ARGV member ("endpoint\nevent"), due, error.
-- Counts a failed attempt of a pending row and makes it due at ARGV[2].
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
