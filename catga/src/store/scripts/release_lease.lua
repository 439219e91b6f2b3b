-- KEYS: lease. ARGV: owner, token. Returns 1 | 0.
if not holds(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
