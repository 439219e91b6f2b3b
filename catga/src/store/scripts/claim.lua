-- KEYS: claim. ARGV: owner, ttl ms. Returns {'won'} | {'running', owner} | {'done', result}.
local k = kind(KEYS[1])
if k == 'done' then return {'done', redis.call('HGET', KEYS[1], 'r')} end
if k == 'run' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  if owner ~= ARGV[1] then return {'running', owner} end
end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'run', 'o', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'won'}
