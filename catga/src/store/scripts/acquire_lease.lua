-- KEYS: lease, fence. ARGV: owner, ttl ms. Returns the token, or nil when
-- someone else holds the lease.
return take(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
