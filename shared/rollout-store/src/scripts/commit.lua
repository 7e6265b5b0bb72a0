-- The one write path of the system: compare-and-set commits, several per call.
--
-- Each commit is all-or-nothing on its own: every precondition of it is checked before
-- its first write, so a refused commit changes nothing, and the commits after it in the
-- call are decided on their own. The call is one script, so nothing sees a state between
-- two of its commits.
--
-- ARGV[1] is the number of commits; then, for each commit, its key count (its keys are
-- the next that many KEYS, referred to by 1-based index within them), its argument count,
-- and its arguments (all integers as decimal strings):
--   [1] index of the idempotency key, or 0          (the command id's stored outcome)
--   [2] outcome to store under it on success
--   [3] its time to live in seconds
--   [4] index of the fence key, or 0                (ticker leader epoch fencing)
--   [5] the writer's epoch
--   [6] earliest allowed Redis TIME in ms, or 0     (a transition must not fire early)
--   then groups, each introduced by its count:
--   checks  : key-index, expected revision ("0" = the hash has no revision yet)
--   puts    : key-index, new revision, field count, then each field's name and value
--                                                   (HSET rev and those fields; the
--                                                    hash's other fields stay)
--   tombs   : key-index, new revision               (HDEL data and touched, keep rev:
--                                                    versions never go back)
--   dels    : key-index
--   zadds   : key-index, score, member
--   zrems   : key-index, member
--   sadds   : key-index, member
--   srems   : key-index, member
--   pushes  : key count, key-indexes, value, max length
--                                                   (LPUSH the value to each list, trimmed
--                                                    to the max: newest first)
--   xadds   : key-index, value                      (outbox stream entry, field "event")
--   then the notification stream: key-index, webhooks key-index, max length, or 0
--                                                   (every outbox value is appended there
--                                                    too, field "event", while the
--                                                    namespace has webhooks)
--   incrs   : key-index, amount                     (INCRBY: counters the commit moves)
--
-- Returns one reply per commit, in order:
--   {"ok", now_ms, outbox ids...} | {"duplicate", stored outcome} |
--   {"conflict", key, actual revision} | {"fenced", fence epoch} | {"early", now_ms}
--
-- What every commit of the call shares is asked once: the clock, each fence, whether the
-- namespace has webhooks; each counter moves once, by what the commits made add up to. A
-- runtime error (a key of the wrong type) ends the call: the commits before it stay
-- written without their counter moves (readers recalibrate a counter that explains
-- nothing), and the caller learns nothing of any commit (as of a lost reply).

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local MEMBER_COMMANDS = {'ZREM', 'SADD', 'SREM'}
local fences = {}
local hooked = {}
-- what the commits made so far move each counter by, applied once at the end
local moves = {}
local counters = {}

-- the commit whose keys follow KEYS[kbase] and whose arguments follow ARGV[abase]
local function commit(kbase, abase)
  local pos = abase + 7
  local function nextarg()
    local value = ARGV[pos]
    pos = pos + 1
    return value
  end

  local function key(index)
    return KEYS[kbase + tonumber(index)]
  end

  local idem_index = tonumber(ARGV[abase + 1])
  if idem_index > 0 then
    local stored = redis.call('GET', key(idem_index))
    if stored then
      return {'duplicate', stored}
    end
  end

  local fence_index = tonumber(ARGV[abase + 4])
  if fence_index > 0 then
    local fence_key = key(fence_index)
    local fence = fences[fence_key]
    if fence == nil then
      fence = tonumber(redis.call('GET', fence_key) or '0')
      fences[fence_key] = fence
    end
    local epoch = tonumber(ARGV[abase + 5])
    if epoch ~= fence then
      return {'fenced', tostring(fence)}
    end
  end

  local not_before = tonumber(ARGV[abase + 6])
  if not_before > 0 and now_ms < not_before then
    return {'early', tostring(now_ms)}
  end

  local checks = tonumber(nextarg())
  for _ = 1, checks do
    local target = key(nextarg())
    local expected = nextarg()
    local actual = redis.call('HGET', target, 'rev') or '0'
    if actual ~= expected then
      return {'conflict', target, actual}
    end
  end

  -- every precondition holds: write
  local puts = tonumber(nextarg())
  for _ = 1, puts do
    local target = key(nextarg())
    local rev = nextarg()
    local fields = tonumber(nextarg())
    if fields == 1 then
      redis.call('HSET', target, 'rev', rev, ARGV[pos], ARGV[pos + 1])
    else
      local command = {'HSET', target, 'rev', rev}
      for offset = 0, 2 * fields - 1 do
        command[5 + offset] = ARGV[pos + offset]
      end
      redis.call(unpack(command))
    end
    pos = pos + 2 * fields
  end
  local tombs = tonumber(nextarg())
  for _ = 1, tombs do
    local target = key(nextarg())
    local rev = nextarg()
    redis.call('HDEL', target, 'data', 'touched')
    redis.call('HSET', target, 'rev', rev)
  end
  local dels = tonumber(nextarg())
  for _ = 1, dels do
    redis.call('DEL', key(nextarg()))
  end
  local zadds = tonumber(nextarg())
  for _ = 1, zadds do
    local target = key(nextarg())
    local score = nextarg()
    local member = nextarg()
    redis.call('ZADD', target, score, member)
  end
  -- zrems, sadds, srems: each a key-index and a member
  for _, command in ipairs(MEMBER_COMMANDS) do
    local count = tonumber(nextarg())
    for _ = 1, count do
      local target = key(nextarg())
      redis.call(command, target, nextarg())
    end
  end
  local pushes = tonumber(nextarg())
  for _ = 1, pushes do
    local targets = tonumber(nextarg())
    local first = pos
    pos = pos + targets
    local value = nextarg()
    local max_len = tonumber(nextarg())
    for at = first, first + targets - 1 do
      local target = key(ARGV[at])
      if redis.call('LPUSH', target, value) > max_len then
        redis.call('LTRIM', target, 0, max_len - 1)
      end
    end
  end
  local result = {'ok', tostring(now_ms)}
  local xadds = tonumber(nextarg())
  local events = {}
  for _ = 1, xadds do
    local target = key(nextarg())
    local value = nextarg()
    local id = redis.call('XADD', target, '*', 'event', value)
    table.insert(result, id)
    table.insert(events, value)
  end
  local notify_index = tonumber(nextarg())
  if notify_index > 0 then
    local webhooks = key(nextarg())
    local max_len = nextarg()
    if #events > 0 and hooked[webhooks] == nil then
      hooked[webhooks] = redis.call('EXISTS', webhooks) == 1
    end
    if #events > 0 and hooked[webhooks] then
      for _, value in ipairs(events) do
        redis.call('XADD', key(notify_index), 'MAXLEN', '~', max_len, '*', 'event', value)
      end
    end
  end
  local incrs = tonumber(nextarg())
  for _ = 1, incrs do
    local counter = key(nextarg())
    local amount = tonumber(nextarg())
    if moves[counter] == nil then
      moves[counter] = 0
      table.insert(counters, counter)
    end
    moves[counter] = moves[counter] + amount
  end
  if idem_index > 0 then
    redis.call('SET', key(idem_index), ARGV[abase + 2], 'EX', tonumber(ARGV[abase + 3]))
  end
  return result
end

local results = {}
local kbase, abase = 0, 1
for position = 1, tonumber(ARGV[1]) do
  local key_count = tonumber(ARGV[abase + 1])
  local arg_count = tonumber(ARGV[abase + 2])
  results[position] = commit(kbase, abase + 2)
  kbase = kbase + key_count
  abase = abase + 2 + arg_count
end
for _, counter in ipairs(counters) do
  if moves[counter] ~= 0 then
    redis.call('INCRBY', counter, moves[counter])
  end
end
return results
