-- Take the next jobs by the queue policy into this worker's pending list, in one step.
-- KEYS: 1 ring, 2 paused set, 3 stream
-- ARGV: 1 group, 2 consumer, 3 max jobs, 4 max preference wait (s), 5 lookahead,
--       6 status a job must have to be taken, 7 status it gets, 8.. preferred model ids
-- Returns {{job id, entry id, job JSON, attempts, message id, lease, token, status}, ...}
if redis.call('SISMEMBER', KEYS[2], '*') == 1 then return {} end
-- The group may be gone (Redis came back empty): recreate it before anything moves.
redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[1], '0', 'MKSTREAM')
local max_jobs = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local lookahead = tonumber(ARGV[5])
local preferred = {}
for i = 8, #ARGV do preferred[ARGV[i]] = true end

-- The first job of waiting list `w` that can still be taken; drops anything else (a job
-- cancelled or expired meanwhile) and takes an emptied list out of the ring.
local function head(w)
  while true do
    local key = redis.call('LINDEX', w, 0)
    if not key then
      redis.call('LREM', KEYS[1], 0, w)
      return nil
    end
    if redis.call('HGET', key, 'status') == ARGV[6] then return key end
    redis.call('LPOP', w)
  end
end

local function candidates()
  local out = {}
  for _, w in ipairs(redis.call('LRANGE', KEYS[1], 0, lookahead - 1)) do
    local key = head(w)
    if key then table.insert(out, {w, key}) end
  end
  return out
end

-- Pop the head of `w`; the server goes to the back of the ring while it has more.
local function pop(w)
  local key = redis.call('LPOP', w)
  redis.call('LREM', KEYS[1], 1, w)
  if redis.call('LLEN', w) > 0 then redis.call('RPUSH', KEYS[1], w) end
  return key
end

local ring = candidates()
if #ring == 0 then return {} end
-- 1. Round-robin's next job, unless a job for a model this worker has loaded waits at another
--    server's head and round-robin's job has not waited longer than max_wait.
local chosen = ring[1]
if next(preferred) ~= nil and not preferred[redis.call('HGET', chosen[2], 'model')] then
  local t = redis.call('TIME')
  local waited = tonumber(t[1]) + tonumber(t[2]) / 1e6
                 - tonumber(redis.call('HGET', chosen[2], 'enqueued_at'))
  if waited < max_wait then
    for _, c in ipairs(ring) do
      if preferred[redis.call('HGET', c[2], 'model')] then chosen = c; break end
    end
  end
end
local taken = {pop(chosen[1])}
-- 2. Batch: keep following round-robin while its next job can share the pipeline call.
local batch_key = redis.call('HGET', taken[1], 'batch_key')
while #taken < max_jobs do
  local w = redis.call('LINDEX', KEYS[1], 0)
  if not w then break end
  local key = head(w)
  if key then
    if redis.call('HGET', key, 'batch_key') ~= batch_key then break end
    table.insert(taken, pop(w))
  end
end
-- 3. Into the stream and this worker's pending list in the same step: no moment where a job
--    is neither waiting nor pending.
local last
for _, key in ipairs(taken) do
  last = redis.call('XADD', KEYS[3], '*', 'job', key)
end
local out = {}
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local done = false
while not done do
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', #taken + 16,
                          'STREAMS', KEYS[3], '>')
  if not read then break end
  for _, entry in ipairs(read[1][2]) do
    local key = entry[2][2]
    if redis.call('HGET', key, 'status') ~= ARGV[6] then
      -- Not one of ours (a stray entry): never let it change a job's status.
      redis.call('XACK', KEYS[3], ARGV[1], entry[1])
      redis.call('XDEL', KEYS[3], entry[1])
    else
      local attempts = redis.call('HINCRBY', key, 'attempts', 1)
      local lease = ARGV[2] .. '/' .. entry[1] .. '/' .. attempts
      redis.call('HSET', key, 'status', ARGV[7], 'worker', ARGV[2], 'entry', entry[1],
                 'lease', lease, 'started_at', now)
      local token = redis.call('GET', redis.call('HGET', key, 'token_key')) or ''
      table.insert(out, {redis.call('HGET', key, 'id'), entry[1], redis.call('HGET', key, 'job'), attempts,
                         redis.call('HGET', key, 'message_id') or '', lease, token, ARGV[7]})
    end
    if entry[1] == last then done = true end
  end
end
return out
