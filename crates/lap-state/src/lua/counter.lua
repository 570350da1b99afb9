-- KEYS = session hash, its counter. ARGV = value, now.
-- Returns {1, 0} (advanced), {0, last} (not greater than last), {-1, 0} (no live session).
local expires = redis.call('HGET', KEYS[1], 'expires')
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then
  return {-1, 0}
end
local last = redis.call('GET', KEYS[2])
if last and tonumber(ARGV[1]) <= tonumber(last) then
  return {0, tonumber(last)}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', redis.call('PTTL', KEYS[1]) + 1000)
return {1, 0}
