-- KEYS: due, taken, items (a timer queue). ARGV: id, until (the taking's),
-- again (epoch ms, or '' when done).
-- Ends this caller's taking of `id` (still taken until `until`): the item
-- is deleted, or waits again until `again`. 1; 0 if the taking lapsed and
-- another caller took the item (or it was rescheduled).
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not (s and tonumber(s) == tonumber(ARGV[2])) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
