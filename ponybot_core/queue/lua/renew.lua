-- Renew the leases of every job a worker holds, if it still holds them.
-- KEYS: 1 stream, 2.. job hashes
-- ARGV: 1 group, 2 consumer, 3.. the worker's lease of each job (same order as KEYS[2..])
-- Returns one word per job: 'ok' | 'lost' (another worker holds it, or it ended) | 'gone'
local out = {}
for i = 2, #KEYS do
  local lease = redis.call('HGET', KEYS[i], 'lease')
  if not lease then
    table.insert(out, 'gone')
  elseif lease ~= ARGV[i + 1] then
    table.insert(out, 'lost')
  else
    local entry = redis.call('HGET', KEYS[i], 'entry')
    local claimed = redis.pcall('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    if type(claimed) == 'table' and #claimed == 1 then
      table.insert(out, 'ok')
    else
      table.insert(out, 'lost')
    end
  end
end
return out
