-- Admission, atomically: expire stale holds, check settings, caps and balance, then hold.
-- KEYS: 1 acct  2 settings  3 holds  4 holdexp  5 day  6 month
-- ARGV: 1 request id  2 amount (micro-credits)  3 now ms  4 hold expiry ms  5 window ttl s
-- Returns {code, warnings (comma list), training_opt_in, balance, floor, held}
local rid, amount, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

-- Release holds whose owner never settled (bounded per call; every admission sweeps).
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)
for _, old in ipairs(stale) do
  local amt = redis.call('HGET', KEYS[3], old)
  if amt then
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(amt))
    redis.call('HDEL', KEYS[3], old)
  end
  redis.call('ZREM', KEYS[4], old)
end

local s = redis.call('HMGET', KEYS[2], 'enabled', 'daily_credit_cap', 'monthly_credit_cap',
  'daily_request_cap', 'reserve_floor', 'block_when_cap_reached', 'training_opt_in')
local optin = (s[7] == '1') and 1 or 0
local a = redis.call('HMGET', KEYS[1], 'balance', 'held')
local balance, held = tonumber(a[1]) or 0, tonumber(a[2]) or 0
local floor = tonumber(s[5]) or 0

local function refuse(code)
  return {code, '', optin, balance, floor, held}
end

if redis.call('HEXISTS', KEYS[3], rid) == 1 then
  return {'ok', '', optin, balance, floor, held}  -- a repeated admission: already held
end
if s[1] == '0' then return refuse('inference_disabled') end

local hard = s[6] ~= '0'
local warnings = {}
local function over(code)
  if hard then return true end
  warnings[#warnings + 1] = code
  return false
end

local d = redis.call('HMGET', KEYS[5], 'admitted', 'credits')
local admitted, day_spent = tonumber(d[1]) or 0, tonumber(d[2]) or 0
local month_spent = tonumber(redis.call('HGET', KEYS[6], 'credits')) or 0

local req_cap = tonumber(s[4])
if req_cap and admitted + 1 > req_cap and over('daily_request_cap_reached') then
  return refuse('daily_request_cap_reached')
end
-- Open holds count against the caps, so concurrent requests can never overshoot them.
local day_cap = tonumber(s[2])
if day_cap and day_spent + held + amount > day_cap and over('daily_credit_cap_reached') then
  return refuse('daily_credit_cap_reached')
end
local month_cap = tonumber(s[3])
if month_cap and month_spent + held + amount > month_cap and over('monthly_credit_cap_reached') then
  return refuse('monthly_credit_cap_reached')
end
-- The floor and the balance are always hard.
if balance - floor - held < amount then return refuse('insufficient_credits') end

redis.call('HSET', KEYS[3], rid, amount)
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), rid)
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HINCRBY', KEYS[5], 'admitted', 1)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[5]))
return {'ok', table.concat(warnings, ','), optin, balance, floor, held + amount}
