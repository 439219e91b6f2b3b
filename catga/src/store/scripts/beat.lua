-- KEYS: beat. ARGV: count, gone ('1' | '0'), ttl ms. Returns 1.
-- A beat is written by its owner alone: the count is the owner's, so a
-- value a failover lost is overwritten by a larger one, never reused.
local k = kind(KEYS[1])
if k ~= 'beat' then clear(KEYS[1], k) end
redis.call('HSET', KEYS[1], 'k', 'beat', 'n', ARGV[1], 'g', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
