-- Removes a webhook and its delivery state and appends the audit entry of the change; the
-- last webhook's removal also drops the notification stream (commits stop appending to it).
--   KEYS[1]: ro:{ns}:webhooks   KEYS[2]: ro:{ns}:webhooks:delivery
--   KEYS[3]: ro:{ns}:notify     KEYS[4]: ro:{ns}:audit:namespace
--   ARGV[1]: id   ARGV[2]: audit entry   ARGV[3]: audit length limit
-- Returns 1 when removed, 0 when there was no such webhook (nothing is written).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('LPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[3]) - 1)
return 1
