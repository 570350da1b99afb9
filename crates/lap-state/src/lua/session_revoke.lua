-- KEYS = session hash, its nonces, its counter, all sessions, the principal's sessions.
-- ARGV = id, principal, now. Returns 1 (a live session revoked), 0 (none live; any
-- leftovers removed), -1 (the session's principal is not ARGV[2]: nothing done).
local rec = redis.call('HMGET', KEYS[1], 'principal', 'expires')
if rec[1] and rec[1] ~= ARGV[2] then
  return -1
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if rec[2] and tonumber(rec[2]) > tonumber(ARGV[3]) then
  return 1
end
return 0
