-- ARGV[4] account. {available, reserved, topped_up, charged}, nil for an unknown account.
expire_held(ARGV[4])
return redis.call('HMGET', account_key(ARGV[4]), 'available', 'reserved', 'topped_up', 'charged')
