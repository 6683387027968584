-- Pause one server (ARGV[1] = its id; its list leaves the ring, so it costs the others
-- nothing) or everything (ARGV[1] = '*': takes stop).
-- KEYS: 1 paused set, 2 ring, 3 the server's waiting list (unused for '*')
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[1] ~= '*' then redis.call('LREM', KEYS[2], 0, KEYS[3]) end
return 1
