-- The one write path of the system: a compare-and-set commit.
--
-- Every precondition is checked before the first write, so a refused commit changes
-- nothing. Keys are passed in KEYS and referred to by 1-based index from ARGV.
--
-- ARGV layout (all integers as decimal strings):
--   [1] index of the idempotency key, or 0          (the command id's stored outcome)
--   [2] outcome to store under it on success
--   [3] its time to live in seconds
--   [4] index of the fence key, or 0                (ticker leader epoch fencing)
--   [5] the writer's epoch
--   [6] earliest allowed Redis TIME in ms, or 0     (a transition must not fire early)
--   then groups, each introduced by its count:
--   checks  : key-index, expected revision ("0" = the hash has no revision yet)
--   puts    : key-index, new revision, data         (HSET rev, data)
--   tombs   : key-index, new revision               (HDEL data, keep rev: versions never go back)
--   dels    : key-index
--   zadds   : key-index, score, member
--   zrems   : key-index, member
--   sadds   : key-index, member
--   srems   : key-index, member
--   pushes  : key-index, value, max length          (LPUSH, trimmed to the max: newest first)
--   xadds   : key-index, value                      (outbox stream entry, field "event")
--   then the notification stream: key-index, webhooks key-index, max length, or 0
--                                                   (every outbox value is appended there
--                                                    too, field "event", while the
--                                                    namespace has webhooks)
--   incrs   : key-index, amount                     (INCRBY: counters the commit moves)
--
-- Returns {"ok", now_ms, outbox ids...} | {"duplicate", stored outcome} |
--         {"conflict", key, actual revision} | {"fenced", fence epoch} | {"early", now_ms}

local pos = 7
local function nextarg()
  local value = ARGV[pos]
  pos = pos + 1
  return value
end

local idem_index = tonumber(ARGV[1])
if idem_index > 0 then
  local stored = redis.call('GET', KEYS[idem_index])
  if stored then
    return {'duplicate', stored}
  end
end

local fence_index = tonumber(ARGV[4])
if fence_index > 0 then
  local fence = tonumber(redis.call('GET', KEYS[fence_index]) or '0')
  local epoch = tonumber(ARGV[5])
  if epoch ~= fence then
    return {'fenced', tostring(fence)}
  end
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local not_before = tonumber(ARGV[6])
if not_before > 0 and now_ms < not_before then
  return {'early', tostring(now_ms)}
end

local checks = tonumber(nextarg())
for _ = 1, checks do
  local key = KEYS[tonumber(nextarg())]
  local expected = nextarg()
  local actual = redis.call('HGET', key, 'rev') or '0'
  if actual ~= expected then
    return {'conflict', key, actual}
  end
end

-- every precondition holds: write
local puts = tonumber(nextarg())
for _ = 1, puts do
  local key = KEYS[tonumber(nextarg())]
  local rev = nextarg()
  local data = nextarg()
  redis.call('HSET', key, 'rev', rev, 'data', data)
end
local tombs = tonumber(nextarg())
for _ = 1, tombs do
  local key = KEYS[tonumber(nextarg())]
  local rev = nextarg()
  redis.call('HDEL', key, 'data')
  redis.call('HSET', key, 'rev', rev)
end
local dels = tonumber(nextarg())
for _ = 1, dels do
  redis.call('DEL', KEYS[tonumber(nextarg())])
end
local zadds = tonumber(nextarg())
for _ = 1, zadds do
  local key = KEYS[tonumber(nextarg())]
  local score = nextarg()
  local member = nextarg()
  redis.call('ZADD', key, score, member)
end
local zrems = tonumber(nextarg())
for _ = 1, zrems do
  local key = KEYS[tonumber(nextarg())]
  redis.call('ZREM', key, nextarg())
end
local sadds = tonumber(nextarg())
for _ = 1, sadds do
  local key = KEYS[tonumber(nextarg())]
  redis.call('SADD', key, nextarg())
end
local srems = tonumber(nextarg())
for _ = 1, srems do
  local key = KEYS[tonumber(nextarg())]
  redis.call('SREM', key, nextarg())
end
local pushes = tonumber(nextarg())
for _ = 1, pushes do
  local key = KEYS[tonumber(nextarg())]
  local value = nextarg()
  local max_len = tonumber(nextarg())
  if redis.call('LPUSH', key, value) > max_len then
    redis.call('LTRIM', key, 0, max_len - 1)
  end
end
local result = {'ok', tostring(now_ms)}
local xadds = tonumber(nextarg())
local events = {}
for _ = 1, xadds do
  local key = KEYS[tonumber(nextarg())]
  local value = nextarg()
  local id = redis.call('XADD', key, '*', 'event', value)
  table.insert(result, id)
  table.insert(events, value)
end
local notify_index = tonumber(nextarg())
if notify_index > 0 then
  local webhooks = KEYS[tonumber(nextarg())]
  local max_len = nextarg()
  if #events > 0 and redis.call('EXISTS', webhooks) == 1 then
    for _, value in ipairs(events) do
      redis.call('XADD', KEYS[notify_index], 'MAXLEN', '~', max_len, '*', 'event', value)
    end
  end
end
local incrs = tonumber(nextarg())
for _ = 1, incrs do
  local key = KEYS[tonumber(nextarg())]
  redis.call('INCRBY', key, nextarg())
end
if idem_index > 0 then
  redis.call('SET', KEYS[idem_index], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return result
