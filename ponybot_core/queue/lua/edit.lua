-- Replace a queued job's parameters in place: same hash, same place in its server's list, so
-- it keeps its position. A compare-and-set on the status: once a worker has taken the job
-- (or it ended) the edit loses and changes nothing.
-- KEYS: 1 job hash
-- ARGV: 1 status the job must have (queued), 2 job id, 3 new job JSON, 4 model id,
--       5 batch key, 6 server id, 7 user id
-- Returns {'ok' | 'started' | 'gone' | 'moved', status before}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or redis.call('HGET', KEYS[1], 'id') ~= ARGV[2] then return {'gone', status or ''} end
if status ~= ARGV[1] then return {'started', status} end
-- The job waits in its server's list and counts against its user's cap: an edit that named
-- another server or user would leave those behind.
if redis.call('HGET', KEYS[1], 'guild') ~= ARGV[6] or redis.call('HGET', KEYS[1], 'user') ~= ARGV[7] then
  return {'moved', status}
end
-- The job JSON and the fields the take script reads beside it change together.
redis.call('HSET', KEYS[1], 'job', ARGV[3], 'model', ARGV[4], 'batch_key', ARGV[5])
return {'ok', status}
