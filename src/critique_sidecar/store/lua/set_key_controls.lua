-- Replace one key's controls atomically: the hash holds exactly the given fields afterwards.
-- A credit cap or a concurrency limit set while the key has requests in flight must count them
-- (admission counts a hold in the key's `h:`/`n:` counters only while such a limit is set): the
-- key's open holds (the holds hash names each one's key) not counted yet are counted now and
-- marked in their hold info, so settlement and the expiry sweep undo exactly that.
-- KEYS: 1 keyctl  2 hold info  3 holds  4 limiter
-- ARGV: 1 key id  2 count the held credits (1/0)  3 count the requests in flight (1/0)
--       4.. field, value, ...
redis.call('DEL', KEYS[1])
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
local kid, credits, in_flight = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
if not credits and not in_flight then return 1 end
local holds = redis.call('HGETALL', KEYS[3])
for i = 1, #holds, 2 do
  local rid = holds[i]
  local amount, owner = string.match(holds[i + 1], '^(%d+):([^|]*)')
  if owner == kid then
    local info = redis.call('HGET', KEYS[2], rid) or (kid .. '|0|0|0|0|0|0')
    local k, h, n, rest = string.match(info, '^(.-)|(%d+)|(%d+)|(.*)$')
    local changed = false
    if credits and h == '0' and tonumber(amount) > 0 then
      redis.call('HINCRBY', KEYS[4], 'h:' .. kid, tonumber(amount))
      h, changed = amount, true
    end
    if in_flight and n == '0' then
      redis.call('HINCRBY', KEYS[4], 'n:' .. kid, 1)
      n, changed = '1', true
    end
    if changed then redis.call('HSET', KEYS[2], rid, table.concat({k, h, n, rest}, '|')) end
  end
end
return 1
