-- KEYS: record [, fence]. ARGV: expect, data [, token].
-- Returns {'ok', version} | {'conflict' [, found]} | {'fenced', current}.
if KEYS[2] then
  local current = fence(KEYS[2])
  if current ~= ARGV[3] then return {'fenced', current} end
end
local k = kind(KEYS[1])
local found = k == 'rec' and redis.call('HGET', KEYS[1], 'v')
if not expected(ARGV[1], found) then
  if found then return {'conflict', found} end
  return {'conflict'}
end
if found then
  redis.call('HSET', KEYS[1], 'd', ARGV[2])
else
  clear(KEYS[1], k)
  redis.call('HSET', KEYS[1], 'k', 'rec', 'v', '0', 'd', ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return {'ok', redis.call('HGET', KEYS[1], 'v')}
