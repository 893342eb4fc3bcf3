-- A script that records its commit in the payments journal takes six more arguments from
-- position n: the rows hash, the time index (sorted set), the row id, its time, and the row's
-- JSON before and after its amount. journal_write(n, amount) writes the row once per id; with
-- no journal arguments it does nothing.
local function journal_write(n, amount)
    local rows, index, id = ARGV[n], ARGV[n + 1], ARGV[n + 2]
    if rows == nil or rows == '' then return end
    if redis.call('HSETNX', rows, id, ARGV[n + 4] .. amount .. ARGV[n + 5]) == 1 then
        redis.call('ZADD', index, ARGV[n + 3], id)
    end
end
