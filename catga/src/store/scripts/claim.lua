-- KEYS: claim. ARGV: owner, ttl ms.
-- Returns {'won', fence} | {'running', owner} | {'done', result}. The fence
-- counts the grants of a running claim: 1 when claimed, kept when its owner
-- claims again, one more at each takeover (take_over_claim.lua).
local k = kind(KEYS[1])
if k == 'done' then return {'done', redis.call('HGET', KEYS[1], 'r')} end
local fence = 1
if k == 'run' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  if owner ~= ARGV[1] then return {'running', owner} end
  fence = tonumber(redis.call('HGET', KEYS[1], 'f') or '1')
end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'run', 'o', ARGV[1], 'f', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'won', tostring(fence)}
