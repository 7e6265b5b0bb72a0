-- Extends the lease if it still holds ARGV[1] (by ARGV[2] ms): returns 1, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
