-- Cancel a job: a queued one leaves its list at once; a running one is asked to stop (its
-- worker checks the flag at every sampling step and ends it).
-- A cancelled job's keys (hash and token key) get the cancelled lifetime in the same step: a
-- job that ended without a result is only kept to answer "already cancelled" a while.
-- KEYS: 1 job hash, 2 ring, 3 the job's token key
-- ARGV: 1 lifetime of a cancelled job (s), 2 statuses it may be cancelled from
--       (comma-separated)
-- Returns {status before, job JSON, message id, interaction token (while it lives)}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', false, ''} end
local job = redis.call('HGET', KEYS[1], 'job')
local message = redis.call('HGET', KEYS[1], 'message_id') or ''
local token = redis.call('GET', KEYS[3]) or ''
local legal = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == status then legal = true end
end
if not legal then return {status, job, message, token} end
if status == 'queued' then
  local w = redis.call('HGET', KEYS[1], 'waiting')
  redis.call('LREM', w, 0, KEYS[1])
  if redis.call('LLEN', w) == 0 then redis.call('LREM', KEYS[2], 0, w) end
  redis.call('SREM', redis.call('HGET', KEYS[1], 'user_set'), redis.call('HGET', KEYS[1], 'id'))
  redis.call('HSET', KEYS[1], 'status', 'cancelled')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
  -- Never lengthen the token's own (Discord's 15 minutes); Redis 6.2 has no EXPIRE ... LT.
  local left = redis.call('TTL', KEYS[3])
  if left == -1 or left > tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1])) end
else
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return {status, job, message, token}
