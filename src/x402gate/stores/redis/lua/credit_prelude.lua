-- Every credit script starts with this prelude. ARGV[1] is the key prefix of the ledger
-- (``<prefix>credit:``), ARGV[2] the caller's now, ARGV[3] how long (ms) a finished reservation
-- is kept past its expires_at; the script's own arguments follow from ARGV[4].
local P = ARGV[1]
local NOW_TEXT = ARGV[2]
local NOW = tonumber(NOW_TEXT)
local KEEP_MS = tonumber(ARGV[3])
local EXPIRY = P .. 'expiry'

-- Canonical non-negative decimal strings ('0', '12', never '012'), compared and added digit
-- by digit: exact for any size.
local function cmp(a, b)
    if #a ~= #b then return #a < #b and -1 or 1 end
    for i = 1, #a do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y and -1 or 1 end
    end
    return 0
end

local function add(a, b)
    local out, carry, i, j = {}, 0, #a, #b
    while i > 0 or j > 0 or carry > 0 do
        local d = carry
        if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
        if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
        if d >= 10 then d = d - 10; carry = 1 else carry = 0 end
        out[#out + 1] = string.char(48 + d)
    end
    return string.reverse(table.concat(out))
end

local function sub(a, b)
    if cmp(a, b) < 0 then error('x402gate: credit ledger would go negative') end
    local out, borrow, i, j = {}, 0, #a, #b
    while i > 0 do
        local d = string.byte(a, i) - 48 - borrow
        if j > 0 then d = d - (string.byte(b, j) - 48); j = j - 1 end
        if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
        out[#out + 1] = string.char(48 + d)
        i = i - 1
    end
    local text = string.gsub(string.reverse(table.concat(out)), '^0+', '')
    if text == '' then return '0' end
    return text
end

local function account_key(account) return P .. 'acct:' .. account end
local function held_key(account) return P .. 'held:' .. account end
local function res_key(id) return P .. 'res:' .. id end

-- A held reservation ends: the account gets back amount - charged, charged is taken.
local function finish(id, account, amount, state, charged, expires_at)
    local acct = account_key(account)
    local bal = redis.call('HMGET', acct, 'available', 'reserved', 'charged')
    if not bal[2] or cmp(bal[2], amount) < 0 then
        error('x402gate: credit account ' .. account .. ' does not hold reservation ' .. id)
    end
    redis.call('HSET', acct, 'available', add(bal[1], sub(amount, charged)),
               'reserved', sub(bal[2], amount), 'charged', add(bal[3], charged))
    local res = res_key(id)
    redis.call('HSET', res, 'state', state, 'charged', charged, 'finished_at', NOW_TEXT)
    local left_ms = math.ceil((tonumber(expires_at) - NOW) * 1000)
    if left_ms < 0 then left_ms = 0 end
    redis.call('PEXPIRE', res, left_ms + KEEP_MS)
    redis.call('ZREM', held_key(account), id)
    redis.call('ZREM', EXPIRY, id)
end

-- Every held reservation of the account whose expires_at has come returns to available.
local function expire_held(account)
    local ids = redis.call('ZRANGEBYSCORE', held_key(account), '-inf', NOW_TEXT)
    for _, id in ipairs(ids) do
        local r = redis.call('HMGET', res_key(id), 'amount', 'expires_at')
        if r[1] then
            finish(id, account, r[1], 'expired', '0', r[2])
        else
            -- The entry was deleted behind the ledger's back (eviction?): its amount is
            -- unknown, so it stays reserved, but it must not break every later operation.
            redis.call('ZREM', held_key(account), id)
            redis.call('ZREM', EXPIRY, id)
        end
    end
end
