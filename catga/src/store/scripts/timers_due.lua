-- KEYS: due, taken (a timer queue). ARGV: upto (epoch ms), now (epoch ms),
-- limit.
-- Returns {id, score, id, score, ...}: the items due by `upto`, earliest
-- first, then the takings that lapsed by `now` (their taker died).
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due do out[#out + 1] = due[i] end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #lapsed do out[#out + 1] = lapsed[i] end
return out
