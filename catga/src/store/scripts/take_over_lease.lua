-- KEYS: lease, fence. ARGV: instance taken over from, new owner, ttl ms.
-- Returns {'taken', token} | {'held', owner}: a lease that is free, or held
-- by the given instance (an owner named `<instance>` or `<instance>#...`),
-- becomes the new owner's with a new fencing token, so the old holder's
-- fenced writes are refused. Atomic in the lease's slot.
if kind(KEYS[1]) == 'lease' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  local from = ARGV[1]
  if owner ~= from and string.sub(owner, 1, #from + 1) ~= from .. '#' then return {'held', owner} end
end
return {'taken', grant(KEYS[1], KEYS[2], ARGV[2], ARGV[3])}
