-- GCRA. KEYS[1]: the key's record "<TAT>,<latest now>". ARGV = now, t, tau (microseconds).
-- Returns {1, new TAT - now} (allowed) or {0, TAT - now} (refused, nothing written).
--
-- Each replica stamps its calls before they reach Redis, so racing calls arrive slightly out
-- of order; a call stamped a few milliseconds before one already counted would be judged
-- against a TAT measured from a later instant and refused though a unit is left. So a call is
-- judged at the latest instant this key has seen (time never runs backwards for a key).
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = now
local record = redis.call('GET', KEYS[1])
if record then
  local stored, latest = string.match(record, '^(%d+),(%d+)$')
  if stored then
    tat = tonumber(stored)
    if tonumber(latest) > now then
      now = tonumber(latest)
    end
  else
    tat = tonumber(record) or now
  end
end
if tat < now then
  tat = now
end
if tat - now > tau then
  return {0, tat - now}
end
local new = tat + t
-- The record matters only while the TAT is ahead; one second more covers clock skew
-- between replicas.
redis.call('SET', KEYS[1], string.format('%d,%d', new, now), 'PX', math.ceil((new - now) / 1000) + 1000)
return {1, new - now}
