-- KEYS = session hash, the principal's sessions, all sessions (sorted sets by expiry).
-- ARGV = id, principal, now, expires, per-agent cap, global cap.
-- Returns 0 (created), 1 (per-agent cap), 2 (global cap).
local now = tonumber(ARGV[3])
local expires = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return 1
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  return 2
end
local ttl = math.ceil((expires - now) / 1000)
redis.call('HSET', KEYS[1], 'principal', ARGV[2], 'created', ARGV[3], 'expires', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
for _, k in ipairs({KEYS[2], KEYS[3]}) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return 0
