-- KEYS: due, taken, items (a timer queue). ARGV: id, seen (the score it was
-- listed with), until (epoch ms), now (epoch ms).
-- Takes item `id` if it is still as listed and due by `now` — waiting at
-- `seen`, or taken until `seen` by a taker whose taking lapsed — for this
-- caller until `until`. Returns the item, or false (taken by another,
-- rescheduled, delivered or cancelled).
local seen, now = tonumber(ARGV[2]), tonumber(ARGV[4])
if seen > now then return false end
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == seen then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  s = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not (s and tonumber(s) == seen) then return false end
end
local item = redis.call('HGET', KEYS[3], ARGV[1])
if not item then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return item
