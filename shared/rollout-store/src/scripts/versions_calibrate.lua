#!lua flags=no-writes
-- Reads, at one instant, a namespace's flag-version counter and the sum of the versions
-- of the flags its index lists: their difference is the counter's offset (constant while
-- every writer moves the counter, see keys.rs `versions`).
--
--   KEYS[1]: ro:{ns}:flags     KEYS[2]: ro:{ns}:versions
--   ARGV[1]: the prefix of the namespace's flag hashes (ro:{ns}:flag:)
--
-- Run with EVAL_RO (a reader's ACL need not allow writes).
--
-- Returns {counter (0 when missing), sum of the listed flags' revisions}.

local sum = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  sum = sum + tonumber(redis.call('HGET', ARGV[1] .. member, 'rev') or '0')
end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), sum}
