-- KEYS: record [, fence [, lease, set...]]. ARGV: expect, data [, token [, owner, entering, member...]].
-- With a lease: the record's last write under it (`put_fenced_and_release`):
-- once written, the first `entering` sets get their member, the rest lose
-- theirs, and the lease is released.
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
local version = redis.call('HGET', KEYS[1], 'v')
if KEYS[3] then
  local entering = tonumber(ARGV[5])
  for i = 4, #KEYS do
    if i - 3 <= entering then redis.call('SADD', KEYS[i], ARGV[i + 2]) else redis.call('SREM', KEYS[i], ARGV[i + 2]) end
  end
  if holds(KEYS[3], ARGV[4], ARGV[3]) then redis.call('DEL', KEYS[3]) end
end
return {'ok', version}
