-- Payment-channel scripts start with the credit prelude (exact decimal arithmetic; ARGV[1] the
-- key prefix, ARGV[2] the caller's now, ARGV[3] unused) and this one. KEYS[1] is the channel's
-- hash, KEYS[2] the sorted set of channels with earned > total_claimed (score: last request).
local CH, UNCLAIMED = KEYS[1], KEYS[2]

local function max(a, b)
    if cmp(a, b) >= 0 then return a end
    return b
end

-- The channel's earned amount; a hash without the field (an older x402gate's) earned what it
-- charged.
local function earned()
    local v = redis.call('HMGET', CH, 'earned', 'charged')
    return v[1] or v[2]
end

local function reindex(id)
    local v = redis.call('HMGET', CH, 'total_claimed', 'last_request_at')
    if cmp(earned(), v[1]) > 0 then
        redis.call('ZADD', UNCLAIMED, tonumber(v[2]), id)
    else
        redis.call('ZREM', UNCLAIMED, id)
    end
end

local function clear_step()
    redis.call('HDEL', CH, 'step_token', 'step_base', 'step_max_claimable', 'step_signature',
               'step_expires_at')
end

local function answer(status)
    return {status, redis.call('HGETALL', CH)}
end
