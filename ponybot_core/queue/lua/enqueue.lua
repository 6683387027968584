-- Queue a job behind its server's others (idempotent: a retried call finds the job there).
-- KEYS: 1 job hash, 2 server's waiting list, 3 ring, 4 user's job set, 5 wake list,
--       6 paused set, 7 token key
-- ARGV: 1 job id, 2 job JSON (no token), 3 server id, 4 user id, 5 model id, 6 batch key,
--       7 user limit ('' = none), 8 interaction token ('' = none), 9 token ttl (s)
-- Returns {position, paused} | {-1, user's job ids} over the cap
local function paused(g) return redis.call('SISMEMBER', KEYS[6], g) == 1 end

-- Jobs that run before the job at 0-based index `idx` of `w`, under round-robin.
local function ahead_of(w, idx)
  local ahead = idx
  local before = true
  for _, h in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if h == w then
      before = false
    else
      local turns = idx
      if before then turns = idx + 1 end
      ahead = ahead + math.min(turns, redis.call('LLEN', h))
    end
  end
  return ahead
end

local held = paused(ARGV[3])
local everything = paused('*')
if redis.call('EXISTS', KEYS[1]) == 1 then
  local idx = redis.call('LPOS', KEYS[2], KEYS[1])
  if not idx then return {0, 0} end
  local stopped = 0
  if held or everything then stopped = 1 end
  return {ahead_of(KEYS[2], idx) + 1, stopped}
end

local limit = tonumber(ARGV[7])
if limit and redis.call('SCARD', KEYS[4]) >= limit then
  return {-1, redis.call('SMEMBERS', KEYS[4])}
end

local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'job', ARGV[2], 'status', 'queued', 'attempts', 0,
           'guild', ARGV[3], 'user', ARGV[4], 'model', ARGV[5], 'batch_key', ARGV[6],
           'waiting', KEYS[2], 'user_set', KEYS[4], 'token_key', KEYS[7],
           'enqueued_at', t[1] .. '.' .. string.format('%06d', t[2]))
if ARGV[8] ~= '' then redis.call('SET', KEYS[7], ARGV[8], 'EX', tonumber(ARGV[9])) end
local n = redis.call('RPUSH', KEYS[2], KEYS[1])
if not held and not redis.call('LPOS', KEYS[3], KEYS[2]) then
  redis.call('RPUSH', KEYS[3], KEYS[2])
end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 63)
if held then return {0, 1} end
local stopped = 0
if everything then stopped = 1 end
return {ahead_of(KEYS[2], n - 1) + 1, stopped}
