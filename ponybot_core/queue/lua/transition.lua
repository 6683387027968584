-- Move a job from one status to another, if the caller still holds it and the move is legal
-- (the table of legal moves is `ponybot_core.queue.state.LEGAL`; the caller passes its part).
-- An ending gives every key of the job (hash, token key) the lifetime of that ending in the
-- same step (`ponybot_core.queue.state.Lifetimes`): nothing of a finished job lives for ever.
-- KEYS: 1 job hash, 2 stream, 3 ring, 4 paused set, 5 dead-letter stream, 6 durations list,
--       7 the job's token key
-- ARGV: 1 group, 2 lease ('' = the holder is not checked), 3 new status,
--       4 statuses it may come from (comma-separated), 5 effect: '' | 'end' | 'requeue',
--       6 lifetime of the job after this ending (s; with 'end'), 7 dead-letter reason
--       ('' = none), 8 dead-letter max length, 9 worker seconds ('' = none),
--       10.. field, value pairs to set
-- Returns {'ok' | 'same' | 'lost' | 'illegal' | 'gone', status before}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', ''} end
local lease = redis.call('HGET', KEYS[1], 'lease') or ''
if ARGV[2] ~= '' and lease ~= ARGV[2] then return {'lost', status} end
-- A retried call whose first reply was lost finds its own work done.
if status == ARGV[3] then return {'same', status} end
local legal = false
for s in string.gmatch(ARGV[4], '[^,]+') do
  if s == status then legal = true end
end
if not legal then return {'illegal', status} end

local id = redis.call('HGET', KEYS[1], 'id')
local entry = redis.call('HGET', KEYS[1], 'entry')
local fields = {'status', ARGV[3]}
for i = 10, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
if entry and (ARGV[5] == 'end' or ARGV[5] == 'requeue') then
  redis.pcall('XACK', KEYS[2], ARGV[1], entry)
  redis.call('XDEL', KEYS[2], entry)
  redis.call('HDEL', KEYS[1], 'entry')
end
if ARGV[5] == 'end' then
  redis.call('SREM', redis.call('HGET', KEYS[1], 'user_set'), id)
  local ttl = tonumber(ARGV[6])
  redis.call('EXPIRE', KEYS[1], ttl)
  -- Never lengthen the token's own (Discord's 15 minutes); Redis 6.2 has no EXPIRE ... LT.
  local left = redis.call('TTL', KEYS[7])
  if left == -1 or left > ttl then redis.call('EXPIRE', KEYS[7], ttl) end
elseif ARGV[5] == 'requeue' then
  -- Back to the front of its server's list: it has waited longest. Nobody holds it now.
  local w = redis.call('HGET', KEYS[1], 'waiting')
  redis.call('LPUSH', w, KEYS[1])
  if redis.call('SISMEMBER', KEYS[4], redis.call('HGET', KEYS[1], 'guild')) == 0
     and not redis.call('LPOS', KEYS[3], w) then
    redis.call('RPUSH', KEYS[3], w)
  end
  redis.call('HSET', KEYS[1], 'lease', '')
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'job_id', id, 'reason', ARGV[7])
end
if ARGV[9] ~= '' then
  redis.call('LPUSH', KEYS[6], ARGV[9])
  redis.call('LTRIM', KEYS[6], 0, 49)
end
return {'ok', status}
