-- KEYS: claim. ARGV: owner, result, ttl ms. Returns 1 | 0.
if not claimed(KEYS[1], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'k', 'done', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
