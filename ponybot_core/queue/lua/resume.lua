-- Resume one server (back into the ring if it has jobs) or everything, and wake workers.
-- KEYS: 1 paused set, 2 ring, 3 wake list, 4 the server's waiting list (unused for '*')
-- ARGV: 1 server id or '*'
redis.call('SREM', KEYS[1], ARGV[1])
if ARGV[1] ~= '*' and redis.call('LLEN', KEYS[4]) > 0
   and not redis.call('LPOS', KEYS[2], KEYS[4]) then
  redis.call('RPUSH', KEYS[2], KEYS[4])
end
for _ = 1, 8 do redis.call('LPUSH', KEYS[3], '1') end
redis.call('LTRIM', KEYS[3], 0, 63)
return 1
