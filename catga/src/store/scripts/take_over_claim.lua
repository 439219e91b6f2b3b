-- KEYS: claim. ARGV: expected owner, new owner, ttl ms.
-- Returns {'won', fence} | {'running', owner} | {'done', result}: like
-- claim.lua, except that a running claim held by exactly the expected owner
-- (judged dead) becomes the new owner's, with the next fence. Atomic in the
-- claim's slot, so it never races with the old owner's own complete or
-- release.
local k = kind(KEYS[1])
if k == 'done' then return {'done', redis.call('HGET', KEYS[1], 'r')} end
local fence = 1
if k == 'run' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  if owner ~= ARGV[1] and owner ~= ARGV[2] then return {'running', owner} end
  fence = tonumber(redis.call('HGET', KEYS[1], 'f') or '1')
  if owner == ARGV[1] then fence = fence + 1 end
end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'run', 'o', ARGV[2], 'f', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'won', tostring(fence)}
