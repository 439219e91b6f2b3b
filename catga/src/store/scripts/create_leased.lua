-- KEYS: record, lease, fence. ARGV: data, owner, ttl ms.
-- A new record under a lease, in one step: when the record does not exist
-- and nobody else holds the lease, takes the lease (or extends it, if the
-- owner holds it already) and writes the record at version 1.
-- Returns {'ok', token} | {'exists'} | {'held'}.
local k = kind(KEYS[1])
if k == 'rec' then return {'exists'} end
local token = take(KEYS[2], KEYS[3], ARGV[2], ARGV[3])
if not token then return {'held'} end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'rec', 'v', '1', 'd', ARGV[1])
return {'ok', token}
