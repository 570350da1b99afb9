-- KEYS = session hash, its nonce set. ARGV = nonce, now.
-- Returns 1 (fresh, recorded), 0 (reused), -1 (no live session).
local expires = redis.call('HGET', KEYS[1], 'expires')
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then
  return -1
end
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  -- The nonces outlive the session record (server time), so no nonce is forgotten while the
  -- session can still be used.
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]) + 1000)
end
return added
