-- ARGV journal arguments (see journal_prelude) from 1, then the amount. Answers 1 if written.
if redis.call('HEXISTS', ARGV[1], ARGV[3]) == 1 then return 0 end
journal_write(1, ARGV[8])
return 1
