-- KEYS[1] rows hash, KEYS[2] time index; ARGV the row ids to delete (a shard's share of the
-- oldest rows beyond the count the retention keeps). Answers how many rows were deleted.
local deleted = redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
return deleted
