-- KEYS: beat. Returns {count, gone} or nil.
if kind(KEYS[1]) ~= 'beat' then return false end
return redis.call('HMGET', KEYS[1], 'n', 'g')
