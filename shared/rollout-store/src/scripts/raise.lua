-- Raises the number at KEYS[1] to ARGV[1] unless it is already higher; returns the value
-- it holds afterwards. Used for namespace fences and the ticker's epoch counter.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if current < wanted then
  redis.call('SET', KEYS[1], ARGV[1])
  return wanted
end
return current
