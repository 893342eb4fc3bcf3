-- ARGV[4..] reservation id, then charge (commit) or nothing (release).
-- Commit answers the charge as text; release answers 1 or 0. A commit records what it charged
-- with the journal arguments (journal_prelude) from ARGV[6].
local id, charge = ARGV[4], ARGV[5]
local r = redis.call('HMGET', res_key(id), 'account', 'amount', 'state', 'expires_at', 'charged')
local live = false
if r[3] == 'held' then
    expire_held(r[1])
    live = tonumber(r[4]) > NOW
end
if charge then
    if not live then
        if r[3] == 'committed' then return r[5] end
        if r[3] == 'held' or r[3] == 'expired' then
            -- The answer outlived its hold (now expired): the charge is still owed, but only
            -- what is available now can pay it (the rest may be held by other requests).
            local acct = account_key(r[1])
            local bal = redis.call('HMGET', acct, 'available', 'charged')
            local late = charge
            if cmp(late, r[2]) > 0 then late = r[2] end
            if not bal[1] then late = '0'
            elseif cmp(late, bal[1]) > 0 then late = bal[1] end
            if bal[1] then
                redis.call('HSET', acct, 'available', sub(bal[1], late),
                           'charged', add(bal[2] or '0', late))
            end
            redis.call('HSET', res_key(id), 'state', 'committed', 'charged', late)
            if late ~= '0' then journal_write(6, late) end
            return late
        end
        return '0'
    end
    if cmp(charge, r[2]) > 0 then charge = r[2] end
    finish(id, r[1], r[2], 'committed', charge, r[4])
    if charge ~= '0' then journal_write(6, charge) end
    return charge
end
if not live then
    if r[3] == 'released' then return 1 end
    return 0
end
finish(id, r[1], r[2], 'released', '0', r[4])
return 1
