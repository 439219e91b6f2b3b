-- KEYS: counter. ARGV: by, bound on overflow. Returns the new value (decimal).
local k = kind(KEYS[1])
if k ~= 'ctr' then
  clear(KEYS[1], k)
  redis.call('HSET', KEYS[1], 'k', 'ctr', 'n', '0')
end
local r = redis.pcall('HINCRBY', KEYS[1], 'n', ARGV[1])
if type(r) == 'table' and r.err then redis.call('HSET', KEYS[1], 'n', ARGV[2]) end
return redis.call('HGET', KEYS[1], 'n')
