-- KEYS: due, taken, items (a timer queue). ARGV: id, now (epoch ms).
-- Deletes item `id` if it is waiting, or taken by a taker whose taking
-- lapsed by `now`: 1. 0 if it is being delivered, or unknown (delivered,
-- cancelled, never scheduled).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not (s and tonumber(s) <= tonumber(ARGV[2])) then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
