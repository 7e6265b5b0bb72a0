-- Moves a rollout's due-index entry only if the writer still holds the fence and the
-- rollout still has the revision the decision was made on, so a slow writer can never
-- push back a newer due time.
-- KEYS: rollout hash, due index, fence. ARGV: expected revision, epoch, rollout id, new
-- score (empty: remove). Returns 'ok', 'conflict' or 'fenced'.
local fence = tonumber(redis.call('GET', KEYS[3]) or '0')
if fence ~= tonumber(ARGV[2]) then
  return 'fenced'
end
local revision = redis.call('HGET', KEYS[1], 'rev') or '0'
if revision ~= ARGV[1] then
  return 'conflict'
end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return 'ok'
