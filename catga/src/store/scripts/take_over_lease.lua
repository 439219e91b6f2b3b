-- KEYS: lease, fence. ARGV: instance taken over from, new owner, ttl ms.
-- Returns {'taken', token} | {'held', owner}: a lease that is free, or held
-- by the given instance (an owner named `<instance>` or `<instance>#...`),
-- becomes the new owner's with a new fencing token, so the old holder's
-- fenced writes are refused. Atomic in the lease's slot.
local k = kind(KEYS[1])
if k == 'lease' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  local from = ARGV[1]
  if owner ~= from and string.sub(owner, 1, #from + 1) ~= from .. '#' then return {'held', owner} end
end
local f = kind(KEYS[2])
if f ~= 'fence' then
  clear(KEYS[2], f)
  redis.call('HSET', KEYS[2], 'k', 'fence', 't', '0')
end
redis.call('HINCRBY', KEYS[2], 't', 1)
local token = redis.call('HGET', KEYS[2], 't')
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'lease', 'o', ARGV[2], 't', token)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'taken', token}
