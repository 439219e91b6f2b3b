-- Helpers every script starts with.
-- What a key holds: its `k` field; 'none' when there is no key, '?' when
-- it is not one of ours.
local function kind(key)
  local t = redis.call('TYPE', key).ok
  if t == 'none' then return 'none' end
  if t ~= 'hash' then return '?' end
  return redis.call('HGET', key, 'k') or '?'
end
-- Make way for a new value: drop whatever the key held (with its TTL).
local function clear(key, k)
  if k ~= 'none' then redis.call('DEL', key) end
end
-- A record's version (a decimal string), or false.
local function version(key)
  if kind(key) ~= 'rec' then return false end
  return redis.call('HGET', key, 'v')
end
-- The compare of compare-and-set: 'absent', 'any' or a version.
local function expected(expect, found)
  if expect == 'any' then return true end
  if expect == 'absent' then return not found end
  return found == expect
end
-- A lease's latest token ('0': never granted).
local function fence(key)
  if kind(key) ~= 'fence' then return '0' end
  return redis.call('HGET', key, 't')
end
-- Whether `owner` holds the lease `key` with `token`.
local function holds(key, owner, token)
  return kind(key) == 'lease' and redis.call('HGET', key, 'o') == owner and redis.call('HGET', key, 't') == token
end
-- Whether `owner` holds the running claim `key`.
local function claimed(key, owner)
  return kind(key) == 'run' and redis.call('HGET', key, 'o') == owner
end
-- Grant lease `lease` to `owner` for `ttl` ms with the next
-- fencing token of `fence` (a counter that never expires); the token.
local function grant(lease, fence, owner, ttl)
  local f = kind(fence)
  if f ~= 'fence' then
    clear(fence, f)
    redis.call('HSET', fence, 'k', 'fence', 't', '0')
  end
  redis.call('HINCRBY', fence, 't', 1)
  local token = redis.call('HGET', fence, 't')
  clear(lease, kind(lease))
  redis.call('HSET', lease, 'k', 'lease', 'o', owner, 't', token)
  redis.call('PEXPIRE', lease, ttl)
  return token
end
-- Take lease `lease` for `owner` for `ttl` ms: extended (same token) if
-- `owner` holds it, granted if free; the token, or false when someone
-- else holds it.
local function take(lease, fence, owner, ttl)
  if kind(lease) == 'lease' then
    if redis.call('HGET', lease, 'o') ~= owner then return false end
    redis.call('PEXPIRE', lease, ttl)
    return redis.call('HGET', lease, 't')
  end
  return grant(lease, fence, owner, ttl)
end
