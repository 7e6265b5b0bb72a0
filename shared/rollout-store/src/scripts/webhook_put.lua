-- Saves a webhook's record and appends the audit entry of the change. A new webhook's
-- deliveries start after the notification stream's last entry (it is told of what happens
-- from now on); a known one keeps its delivery state.
--   KEYS[1]: ro:{ns}:webhooks   KEYS[2]: ro:{ns}:webhooks:delivery
--   KEYS[3]: ro:{ns}:notify     KEYS[4]: ro:{ns}:audit:namespace
--   ARGV[1]: id   ARGV[2]: record (JSON)   ARGV[3]: audit entry   ARGV[4]: audit length limit
-- Returns 1 for a new webhook, 0 for a replaced one.
local created = 0
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  local cursor = '0-0'
  if #last > 0 then
    cursor = last[1][1]
  end
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({cursor = cursor}))
  created = 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return created
