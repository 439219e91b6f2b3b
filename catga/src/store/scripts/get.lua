-- KEYS: record. Returns {version, data} or nil.
if kind(KEYS[1]) ~= 'rec' then return false end
return redis.call('HMGET', KEYS[1], 'v', 'd')
