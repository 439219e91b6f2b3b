-- KEYS: claim. ARGV: owner, ttl ms. Returns 1 | 0. Extends a running claim
-- still held by `owner`; never creates one (a renewal that arrives after
-- the claim was completed or released changes nothing).
if not claimed(KEYS[1], ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
