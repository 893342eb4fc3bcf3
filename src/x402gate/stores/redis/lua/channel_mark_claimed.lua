-- ARGV[4..] id, claimed, then the journal arguments (journal_prelude) recording what the
-- claim adds. 1 when recorded, 0 for an unknown channel or above earned.
local id, claimed = ARGV[4], ARGV[5]
local cur = redis.call('HMGET', CH, 'charged', 'total_claimed')
if not cur[1] or cmp(claimed, earned()) > 0 then return 0 end
redis.call('HSET', CH, 'total_claimed', max(cur[2], claimed))
if cmp(claimed, cur[2]) > 0 then journal_write(6, sub(claimed, cur[2])) end
reindex(id)
return 1
