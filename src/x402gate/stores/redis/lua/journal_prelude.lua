-- A script that records its commit in the payments journal takes seven more arguments from
-- position n: the rows hash, the time index (sorted set), the row id, its time, the row's
-- JSON before and after its amount, and the webhook outbox of the row ('' for none: else the
-- outbox's due set, then one endpoint per line). journal_write(n, amount) writes the row once
-- per id, and queues it for each endpoint; with no journal arguments it does nothing.
local function journal_write(n, amount)
    local rows, index, id = ARGV[n], ARGV[n + 1], ARGV[n + 2]
    if rows == nil or rows == '' then return end
    if redis.call('HSETNX', rows, id, ARGV[n + 4] .. amount .. ARGV[n + 5]) == 1 then
        redis.call('ZADD', index, ARGV[n + 3], id)
        local outbox = ARGV[n + 6]
        if outbox ~= nil and outbox ~= '' then
            local due = nil
            for part in string.gmatch(outbox, '[^\n]+') do
                if due == nil then
                    due = part
                else
                    redis.call('ZADD', due, 'NX', ARGV[n + 3], part .. '\n' .. id)
                end
            end
        end
    end
end
