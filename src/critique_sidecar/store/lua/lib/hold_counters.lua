-- A hold and what its admission counted, and their undoing. The holds hash maps a request id to
-- "<held micro-credits>:<key id>|<grant>=<x>,..." (the credits held on each grant, lib/grants.lua;
-- none from before grants, a bare number from before keys were named there). A hold info
-- entry "key|held micro-credits|in flight 1/0|in account window 1/0|in key window 1/0|tokens|at
-- ms[|end user's held micro-credits|end user]" says what was counted per key, per end user and
-- per minute window: place_hold.lua writes one when it
-- counted anything, set_key_controls.lua when a key limit set later counts an open hold. The
-- expiry sweep and settle.lua release the key's held credits and in-flight count with
-- release_counters.
local function hold_amount(value)
  if not value then return nil end
  return tonumber(string.match(value, '^(%d+)'))
end

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

-- The end user's held credits, when the hold counted them (an end-user credit cap applied).
local function release_end_user(info)
  local h, user = string.match(info, '^[^|]*|%d+|%d+|%d|%d|%d+|%d+|(%d+)|(.*)$')
  if h and tonumber(h) > 0 and redis.call('HINCRBY', K_limiter, 'hu:' .. user, -tonumber(h)) <= 0 then
    redis.call('HDEL', K_limiter, 'hu:' .. user)
  end
end
