-- One balancing step of a ticker replica (SPEC §14): heartbeat it among the replicas, renew
-- the shard leases it still holds, give up what it no longer wants, and take free shards
-- up to its fair share (the shard count over the live replicas, rounded up).
--
-- KEYS[1] epoch counter, KEYS[2] replicas (sorted set: replica id -> heartbeat expiry ms),
-- KEYS[3] the shard count every replica must agree on, KEYS[4 + s] the lease of shard s
-- (s = 0 .. count - 1; each holds '<replica id>:<epoch>' with a time to live).
-- ARGV[1] replica id, ARGV[2] time to live in ms, ARGV[3] shard count, ARGV[4] 'share'
-- (stay, take a fair share) or 'leave' (give everything up), ARGV[5] the shard to start
-- looking for free ones at, ARGV[6] n, then n (shard, epoch) pairs held, then m, then m
-- (shard, epoch) pairs to give up.
--
-- Returns {status, stored count, replicas, ms until another replica's heartbeat expires
-- (-1: none), kept, acquired, lost, released}, the last four flat lists of shard, epoch
-- pairs (lost and released: shards only). status 'mismatch' when the stored shard count
-- differs from ARGV[3]: nothing is written then.
local replica = ARGV[1]
local ttl = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local mode = ARGV[4]
local start = tonumber(ARGV[5])

local stored = redis.call('GET', KEYS[3])
if not stored then
  redis.call('SET', KEYS[3], count)
elseif tonumber(stored) ~= count then
  return {'mismatch', tonumber(stored), 0, -1, {}, {}, {}, {}}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if mode == 'leave' then
  redis.call('ZREM', KEYS[2], replica)
else
  redis.call('ZADD', KEYS[2], now + ttl, replica)
end
local replicas = redis.call('ZCARD', KEYS[2])

local function lease_key(shard)
  return KEYS[4 + shard]
end
local function ours(shard, epoch)
  return redis.call('GET', lease_key(shard)) == replica .. ':' .. epoch
end

local at = 6
local kept, lost, released = {}, {}, {}
local held = tonumber(ARGV[at])
at = at + 1
for _ = 1, held do
  local shard, epoch = tonumber(ARGV[at]), ARGV[at + 1]
  at = at + 2
  if shard < count and ours(shard, epoch) then
    kept[#kept + 1] = {shard, epoch}
  else
    lost[#lost + 1] = shard
  end
end
local giving = tonumber(ARGV[at])
at = at + 1
for _ = 1, giving do
  local shard, epoch = tonumber(ARGV[at]), ARGV[at + 1]
  at = at + 2
  if shard < count and ours(shard, epoch) then
    redis.call('DEL', lease_key(shard))
    released[#released + 1] = shard
  end
end

local share = 0
if mode == 'share' and replicas > 0 then
  share = math.ceil(count / replicas)
end
-- above the fair share: the last ones held go back
while #kept > share do
  local shard = table.remove(kept)[1]
  redis.call('DEL', lease_key(shard))
  released[#released + 1] = shard
end
for _, pair in ipairs(kept) do
  redis.call('PEXPIRE', lease_key(pair[1]), ttl)
end

local acquired = {}
if #kept < share then
  for offset = 0, count - 1 do
    local shard = (start + offset) % count
    if redis.call('EXISTS', lease_key(shard)) == 0 then
      local epoch = redis.call('INCR', KEYS[1])
      redis.call('SET', lease_key(shard), replica .. ':' .. epoch, 'PX', ttl)
      acquired[#acquired + 1] = {shard, epoch}
      if #kept + #acquired >= share then
        break
      end
    end
  end
end

-- the earliest moment another replica's heartbeat (and so its leases) may run out
local wake = -1
local soonest = redis.call('ZRANGE', KEYS[2], 0, 1, 'WITHSCORES')
for i = 1, #soonest, 2 do
  if soonest[i] ~= replica then
    wake = math.max(0, tonumber(soonest[i + 1]) - now)
    break
  end
end

local function flat(pairs_list)
  local out = {}
  for _, pair in ipairs(pairs_list) do
    out[#out + 1] = pair[1]
    out[#out + 1] = tonumber(pair[2])
  end
  return out
end
return {'ok', count, replicas, wake, flat(kept), flat(acquired), lost, released}
