-- Shared by reserve.lua and settle.lua.
-- KEYS[1]: the window's hash: used amounts (fields calls … spend) and one field per
--          reservation, 'r:<id>' = '<state>,<5 amounts>' with state o (open) or x (released).
-- KEYS[2]: sorted set of reservation ids by due time (open: expiry; released: forget time).
local DIMS = {'calls', 'request_bytes', 'response_bytes', 'duration_ms', 'spend'}

local function add(field, delta)
  if delta ~= 0 then
    local v = redis.call('HINCRBY', KEYS[1], field, delta)
    if v < 0 then
      redis.call('HSET', KEYS[1], field, 0)
    end
  end
end

local function parse(rec)
  local p = {}
  for part in string.gmatch(rec, '[^,]+') do
    p[#p + 1] = part
  end
  return p
end

local function used()
  local u = redis.call('HMGET', KEYS[1], DIMS[1], DIMS[2], DIMS[3], DIMS[4], DIMS[5])
  local out = {}
  for i = 1, 5 do
    out[i] = tonumber(u[i] or '0')
  end
  return out
end

-- Open reservations past their expiry give their amounts back and are remembered as released
-- for tomb_ttl more; released ones past that are forgotten. At most max of them per call: the
-- rest wait for the next call, which only makes the window look fuller, never emptier.
local function release_due(now, tomb_ttl, max)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max)
  for _, id in ipairs(due) do
    local f = 'r:' .. id
    local rec = redis.call('HGET', KEYS[1], f)
    if rec and string.sub(rec, 1, 1) == 'o' then
      local p = parse(rec)
      for i = 1, 5 do
        add(DIMS[i], -tonumber(p[i + 1]))
      end
      redis.call('HSET', KEYS[1], f, 'x' .. string.sub(rec, 2))
      redis.call('ZADD', KEYS[2], now + tomb_ttl, id)
    else
      redis.call('HDEL', KEYS[1], f)
      redis.call('ZREM', KEYS[2], id)
    end
  end
end
