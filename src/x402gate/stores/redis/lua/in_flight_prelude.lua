-- One hash per account, KEYS[1] = ``<prefix>credit:inflight:<account>``: field entry id, value
-- ``amount|until_block|expires_at``. The scripts share the ledger's prelude for its exact
-- decimal arithmetic; block numbers stay far below 2**53 and compare as Lua numbers.
local function parse(value)
    return string.match(value, '^(%d+)|(%d+)|(.+)$')
end
local function keep(key, expires_at, grace_ms)
    local want = math.ceil((expires_at - NOW) * 1000) + grace_ms
    if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
end
