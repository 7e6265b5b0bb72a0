-- Takes the ticker lease when it is free.
-- KEYS[1] lease, KEYS[2] epoch counter; ARGV[1] replica id, ARGV[2] time to live in ms.
-- Returns the new epoch, or nil when the lease is held.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
return epoch
