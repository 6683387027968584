-- Set fields of a job hash that still exists (never resurrect a finished or lost job as a
-- hash with only these fields).
-- KEYS: 1 job hash; ARGV: field, value pairs
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
