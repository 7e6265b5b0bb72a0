-- Saves a namespace's freezes if they are still what the planner read, and appends the
-- audit entry of the change (newest first, trimmed) and, while the namespace has webhooks,
-- the same entry to its notification stream.
--   KEYS[1]: ro:{ns}:freezes     KEYS[2]: ro:{ns}:audit:namespace
--   KEYS[3]: ro:{ns}:notify      KEYS[4]: ro:{ns}:webhooks
--   ARGV[1]: the value read ('' when there was none)   ARGV[2]: the new value
--   ARGV[3]: the audit entry     ARGV[4]: the audit log's length limit
--   ARGV[5]: the notification stream's length limit
-- Returns 1 when saved, 0 when another writer changed the freezes first.
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'audit', ARGV[3])
end
return 1
