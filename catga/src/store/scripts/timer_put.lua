-- KEYS: due, taken, items (a timer queue). ARGV: id, due (epoch ms), item,
-- replace ('1' or '0').
-- Schedules item `id` at `due`: 1; 0 if `id` is queued already and
-- `replace` is '0' (then nothing changes).
if ARGV[4] ~= '1' and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
