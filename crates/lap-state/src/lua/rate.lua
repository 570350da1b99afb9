-- GCRA. KEYS[1]: the key's theoretical arrival time (TAT). ARGV = now, t, tau (microseconds).
-- Returns {1, new TAT - now} (allowed) or {0, TAT - now} (refused, nothing written).
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then
  tat = now
end
if tat - now > tau then
  return {0, tat - now}
end
local new = tat + t
-- The record matters only while the TAT is ahead; one second more covers clock skew
-- between replicas.
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {1, new - now}
