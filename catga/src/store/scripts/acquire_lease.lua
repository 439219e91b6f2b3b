-- KEYS: lease, fence. ARGV: owner, ttl ms. Returns the token, or nil when
-- someone else holds the lease.
local token
local k = kind(KEYS[1])
if k == 'lease' then
  if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return false end
  token = redis.call('HGET', KEYS[1], 't')
else
  local f = kind(KEYS[2])
  if f ~= 'fence' then
    clear(KEYS[2], f)
    redis.call('HSET', KEYS[2], 'k', 'fence', 't', '0')
  end
  redis.call('HINCRBY', KEYS[2], 't', 1)
  token = redis.call('HGET', KEYS[2], 't')
  clear(KEYS[1], k)
end
redis.call('HSET', KEYS[1], 'k', 'lease', 'o', ARGV[1], 't', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
