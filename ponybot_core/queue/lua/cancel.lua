-- Cancel a job: a queued one leaves its list at once; a running one is asked to stop (its
-- worker checks the flag at every sampling step and ends it).
-- KEYS: 1 job hash, 2 ring
-- ARGV: 1 ttl of a finished job (s), 2 statuses it may be cancelled from (comma-separated)
-- Returns {status before, job JSON, message id, interaction token (while it lives)}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', false, ''} end
local job = redis.call('HGET', KEYS[1], 'job')
local message = redis.call('HGET', KEYS[1], 'message_id') or ''
local token = redis.call('GET', redis.call('HGET', KEYS[1], 'token_key') or '') or ''
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
else
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return {status, job, message, token}
