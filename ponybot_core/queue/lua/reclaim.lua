-- Take over jobs whose worker stopped renewing their lease (it died or hung).
-- KEYS: 1 stream, 2 paused set, 3 ring
-- ARGV: 1 group, 2 consumer, 3 min idle (ms), 4 count, 5 statuses a reclaimed job may have
--       (comma-separated: they keep it), 6 status a paused server's job goes back to
-- Returns {{job id, entry id, job JSON, attempts, message id, lease, token, status}, ...}
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local keeps = {}
for s in string.gmatch(ARGV[5], '[^,]+') do keeps[s] = true end
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
                         'COUNT', ARGV[4])
local out = {}
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])

local function drop(id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
end

for _, entry in ipairs(reply[2]) do
  local id = entry[1]
  local fields = entry[2]
  local key = type(fields) == 'table' and fields[2] or nil
  local status = key and redis.call('HGET', key, 'status')
  if not status or not keeps[status] then
    -- Finished, cancelled, or its state is gone: nothing left to do for this entry.
    drop(id)
  elseif status == 'running' and (redis.call('SISMEMBER', KEYS[2], '*') == 1 or
         redis.call('SISMEMBER', KEYS[2], redis.call('HGET', key, 'guild')) == 1) then
    -- A paused server's job waits for the resume at the front of its list, like it never
    -- started. (A job in `posting` may be posted already: it is finished, never held back.)
    local w = redis.call('HGET', key, 'waiting')
    redis.call('LPUSH', w, key)
    if redis.call('SISMEMBER', KEYS[2], redis.call('HGET', key, 'guild')) == 0
       and not redis.call('LPOS', KEYS[3], w) then
      redis.call('RPUSH', KEYS[3], w)
    end
    redis.call('HSET', key, 'status', ARGV[6], 'lease', '')
    drop(id)
  else
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    local lease = ARGV[2] .. '/' .. id .. '/' .. attempts
    redis.call('HSET', key, 'worker', ARGV[2], 'lease', lease, 'started_at', now)
    local token = redis.call('GET', redis.call('HGET', key, 'token_key')) or ''
    table.insert(out, {redis.call('HGET', key, 'id'), id, redis.call('HGET', key, 'job'), attempts,
                       redis.call('HGET', key, 'message_id') or '', lease, token, status})
  end
end
return out
