-- KEYS: lease, fence. ARGV: owner, ttl ms. Returns the token, or nil when
-- someone else holds the lease.
if kind(KEYS[1]) == 'lease' then
  if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return false end
  local token = redis.call('HGET', KEYS[1], 't')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return token
end
return grant(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
