-- KEYS: record, lease, fence [, set...]. ARGV: data, owner, ttl ms [, member...].
-- Each set gets its member first, whatever comes next (on one server only:
-- a Cluster's sets are in other slots, added before this script).
-- A new record under a lease, in one step: when the record does not exist
-- and nobody else holds the lease, takes the lease (or extends it, if the
-- owner holds it already) and writes the record at version 1.
-- Returns {'ok', token} | {'exists'} | {'held'}.
for i = 4, #KEYS do redis.call('SADD', KEYS[i], ARGV[i]) end
local k = kind(KEYS[1])
if k == 'rec' then return {'exists'} end
local token = take(KEYS[2], KEYS[3], ARGV[2], ARGV[3])
if not token then return {'held'} end
clear(KEYS[1], k)
redis.call('HSET', KEYS[1], 'k', 'rec', 'v', '1', 'd', ARGV[1])
return {'ok', token}
