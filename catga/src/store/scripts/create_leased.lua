-- KEYS: record, lease, fence. ARGV: data, owner, ttl ms.
-- A new record under a lease, in one step: when the record does not exist
-- and nobody else holds the lease, takes the lease (or extends it, if the
-- owner holds it already) and writes the record at version 1.
-- Returns {'ok', token} | {'exists'} | {'held'}.
local k = kind(KEYS[1])
if k == 'rec' then return {'exists'} end
local token
if kind(KEYS[2]) == 'lease' then
  if redis.call('HGET', KEYS[2], 'o') ~= ARGV[2] then return {'held'} end
  token = redis.call('HGET', KEYS[2], 't')
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  token = grant(KEYS[2], KEYS[3], ARGV[2], ARGV[3])
end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'rec', 'v', '1', 'd', ARGV[1])
return {'ok', token}
