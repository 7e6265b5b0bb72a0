-- Deletes the lease if it still holds ARGV[1]: returns 1, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
