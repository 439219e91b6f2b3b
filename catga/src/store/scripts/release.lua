-- KEYS: claim. ARGV: owner. Returns 1 | 0.
if not claimed(KEYS[1], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
