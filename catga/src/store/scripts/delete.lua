-- KEYS: record. ARGV: expect. Returns {'ok', '1' | '0'} | {'conflict' [, found]}.
local found = version(KEYS[1])
if not expected(ARGV[1], found) then
  if found then return {'conflict', found} end
  return {'conflict'}
end
return {'ok', tostring(redis.call('DEL', KEYS[1]))}
