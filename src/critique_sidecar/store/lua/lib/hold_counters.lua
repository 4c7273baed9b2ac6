-- What an admission counted for one hold, and its undoing. place_hold.lua writes a hold info
-- entry for every hold: "key|held micro-credits|in flight 1/0|in account window 1/0|in key
-- window 1/0|tokens|at ms" (set_key_controls.lua may count an open hold later and mark it); its
-- expiry sweep and settle.lua release the key's held credits and in-flight count with
-- release_counters.
local function read_hold_info(info)
  return string.match(info, '^(.-)|(%d+)|(%d+)|(%d)|(%d)|(%d+)|')
end

local function release_counters(key_id, held, in_flight)
  if tonumber(held) > 0 and redis.call('HINCRBY', K_limiter, 'h:' .. key_id, -tonumber(held)) <= 0 then
    redis.call('HDEL', K_limiter, 'h:' .. key_id)
  end
  if in_flight == '1' and redis.call('HINCRBY', K_limiter, 'n:' .. key_id, -1) <= 0 then
    redis.call('HDEL', K_limiter, 'n:' .. key_id)
  end
end
