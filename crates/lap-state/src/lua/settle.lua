-- settle: ARGV = id, now, tomb_ttl, actual[5], max. Returns {0} (unknown) or
-- {1, late, used[5]}.
local id = ARGV[1]
release_due(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[9]))
local f = 'r:' .. id
local rec = redis.call('HGET', KEYS[1], f)
if not rec then
  return {0}
end
local p = parse(rec)
local late = p[1] == 'x'
for i = 1, 5 do
  local delta = tonumber(ARGV[3 + i])
  if not late then
    delta = delta - tonumber(p[i + 1])
  end
  add(DIMS[i], delta)
end
redis.call('HDEL', KEYS[1], f)
redis.call('ZREM', KEYS[2], id)
local u = used()
local l = 0
if late then l = 1 end
return {1, l, u[1], u[2], u[3], u[4], u[5]}
