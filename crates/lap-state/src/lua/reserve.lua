-- reserve: ARGV = id, now, expires, keep_until, tomb_ttl, want[5], limit[5] (-1: none), max
-- (instants in microseconds). Returns {1, used[5]} or {0, dimension, used[5]}.
local id = ARGV[1]
local now = tonumber(ARGV[2])
local keep_ms = math.ceil((tonumber(ARGV[4]) - now) / 1000)
release_due(now, tonumber(ARGV[5]), tonumber(ARGV[16]))
local u = used()
local want = {}
for i = 1, 5 do
  want[i] = tonumber(ARGV[5 + i])
  local limit = tonumber(ARGV[10 + i])
  if limit >= 0 and want[i] > limit - u[i] then
    return {0, i, u[1], u[2], u[3], u[4], u[5]}
  end
end
for i = 1, 5 do
  add(DIMS[i], want[i])
  u[i] = u[i] + want[i]
end
redis.call('HSET', KEYS[1], 'r:' .. id,
  'o,' .. ARGV[6] .. ',' .. ARGV[7] .. ',' .. ARGV[8] .. ',' .. ARGV[9] .. ',' .. ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[3], id)
redis.call('PEXPIRE', KEYS[1], keep_ms)
redis.call('PEXPIRE', KEYS[2], keep_ms)
return {1, u[1], u[2], u[3], u[4], u[5]}
