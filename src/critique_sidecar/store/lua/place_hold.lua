-- Admission, atomically: expire stale holds, check settings, caps and balance, then hold.
-- KEYS: 1 acct  2 settings  3 holds  4 holdexp  5 day  6 month
--       7 the key's controls  8 limiter state  9 hold info  10 the account's minute window
--       11 the key's minute window   (7-11: per-key controls and rate limits)
-- ARGV: 1 request id  2 amount (micro-credits)  3 now ms  4 hold expiry ms  5 window ttl s
--       6 key id  7 model id  8 token bound (input bound + output bound)
-- Returns {code, warnings (comma list), training_opt_in, balance, floor, held,
--          detail, retry ms, requests limit, remaining, reset ms, tokens limit, remaining, reset ms}
-- (a limit of -1: no such limit applies; detail names the refusing control, e.g.
--  key:requests_per_minute:50; retry -1: it can never fit)
local rid, amount, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local kid, model, tokens = ARGV[6] or '', ARGV[7] or '', tonumber(ARGV[8]) or 0
local PER_MIN = 60000  -- the rate limits' window, ms

-- >>> limits: per-key counters a hold took
-- (hold info "key|held micro-credits|in flight 1/0|in account window 1/0|in key window 1/0|tokens|at ms")
local function untrack(info)
  local k, h, n = string.match(info, '^(.-)|(%d+)|(%d+)|')
  if not k then return end
  if tonumber(h) > 0 and redis.call('HINCRBY', KEYS[8], 'h:' .. k, -tonumber(h)) <= 0 then
    redis.call('HDEL', KEYS[8], 'h:' .. k)
  end
  if n == '1' and redis.call('HINCRBY', KEYS[8], 'n:' .. k, -1) <= 0 then
    redis.call('HDEL', KEYS[8], 'n:' .. k)
  end
end
-- <<< limits

-- Release holds whose owner never settled (bounded per call; every admission sweeps).
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)
for _, old in ipairs(stale) do
  local amt = redis.call('HGET', KEYS[3], old)
  if amt then
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(amt))
    redis.call('HDEL', KEYS[3], old)
  end
  redis.call('ZREM', KEYS[4], old)
  local info = redis.call('HGET', KEYS[9], old)  -- limits: an expired hold leaves the key's counters
  if info then
    untrack(info)
    redis.call('HDEL', KEYS[9], old)
  end
end

local s = redis.call('HMGET', KEYS[2], 'enabled', 'daily_credit_cap', 'monthly_credit_cap',
  'daily_request_cap', 'reserve_floor', 'block_when_cap_reached', 'training_opt_in',
  'rpm', 'tpm', 'max_concurrent')
local optin = (s[7] == '1') and 1 or 0
local a = redis.call('HMGET', KEYS[1], 'balance', 'held')
local balance, held = tonumber(a[1]) or 0, tonumber(a[2]) or 0
local floor = tonumber(s[5]) or 0
local kc = redis.call('HMGET', KEYS[7], 'expires_at_ms', 'models', 'daily_credit_cap', 'rpm', 'tpm',
  'max_concurrent')

-- >>> limits: sliding-window logs. Per scope (the account; the key) a sorted set holds every
-- request admitted in the last minute while a per-minute limit was set: member
-- "<request id>:<tokens>", scored by admission time (ms); the lim hash keeps the tokens' sum.
-- Requests in the window = the set's size; exact at any concurrency (one script at a time).
local function limit_of(raw)  -- a limit counts only when it is a number >= 1 (as the API stores it)
  local v = tonumber(raw)
  if v and v >= 1 then return math.floor(v) end
  return nil
end
local function window(zkey, sumfield, rpm, tpm, scope)
  rpm, tpm = limit_of(rpm), limit_of(tpm)
  if not rpm and not tpm then return nil end
  local sum = tonumber(redis.call('HGET', KEYS[8], sumfield)) or 0
  -- Entries leave the window here (bounded per call; each is removed once: amortised O(1)).
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - PER_MIN, 'LIMIT', 0, 500)
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - (tonumber(string.match(m, ':(%d+)$')) or 0) end
    if sum < 0 then sum = 0 end
    redis.call('ZREMRANGEBYRANK', zkey, 0, #old - 1)
    redis.call('HSET', KEYS[8], sumfield, string.format('%d', sum))
  end
  local count = redis.call('ZCARD', zkey)
  if count == 0 then sum = 0 end  -- the set expired (idle two minutes): its sum went with it
  local oldest = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  local reset = oldest[2] and math.max(tonumber(oldest[2]) + PER_MIN - now, 0) or 0
  return {zkey = zkey, sumfield = sumfield, rpm = rpm, tpm = tpm, scope = scope,
          count = count, sum = sum, reset = reset}
end
local windows = {}
windows[#windows + 1] = window(KEYS[10], 'tw', s[8], s[9], 'account')
windows[#windows + 1] = window(KEYS[11], 'tw:' .. kid, kc[4], kc[5], 'key')

-- The tightest requests and tokens limit (least remaining), as the x-ratelimit-* headers show it.
local function status(admitted)
  local out = {-1, -1, -1, -1, -1, -1}
  local extra = admitted and 1 or 0
  for _, w in ipairs(windows) do
    local reset = (admitted and w.count == 0) and PER_MIN or w.reset
    if w.rpm then
      local left = math.max(w.rpm - w.count - extra, 0)
      if out[1] < 0 or left < out[2] or (left == out[2] and w.rpm < out[1]) then
        out[1], out[2], out[3] = w.rpm, left, reset
      end
    end
    if w.tpm then
      local left = math.max(w.tpm - w.sum - extra * tokens, 0)
      if out[4] < 0 or left < out[5] or (left == out[5] and w.tpm < out[4]) then
        out[4], out[5], out[6] = w.tpm, left, reset
      end
    end
  end
  return out
end

local function answer(code, warnings, detail, retry, admitted)
  local st = status(admitted)
  return {code, warnings, optin, balance, floor, held, detail, retry,
          st[1], st[2], st[3], st[4], st[5], st[6]}
end
-- <<< limits

local function refuse(code, detail)
  return answer(code, '', detail or '', 0, false)
end

if redis.call('HEXISTS', KEYS[3], rid) == 1 then
  return refuse('ok')  -- a repeated admission: already held
end

-- >>> limits: the key's own controls come first (a dead or restricted key explains itself)
local expires = tonumber(kc[1])
if expires and now >= expires then return refuse('key_expired', kc[1]) end
if kc[2] and #kc[2] > 2 and not string.find(kc[2], ',' .. model .. ',', 1, true) then
  return refuse('model_not_allowed', model)
end
-- <<< limits

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

-- >>> limits: the key's daily credit cap (always hard), against its spend and its own open holds
local key_cap = tonumber(kc[3])
if key_cap then
  local key_spent = tonumber(redis.call('HGET', KEYS[5], 'k:' .. kid .. ':credits')) or 0
  local key_held = tonumber(redis.call('HGET', KEYS[8], 'h:' .. kid)) or 0
  if key_spent + key_held + amount > key_cap then return refuse('key_daily_credit_cap_reached') end
end
-- <<< limits

-- The floor and the balance are always hard.
if balance - floor - held < amount then return refuse('insufficient_credits') end

-- >>> limits: rate limits, always hard. Refused with the control that needs the longest wait.
local worst, worst_wait = nil, -1
local function limited(name, wait)  -- wait: ms until it fits; -2: it never can
  if wait == -2 then wait = math.huge end
  if wait > worst_wait then worst, worst_wait = name, wait end
end
local acct_conc = limit_of(s[10])
if acct_conc and redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') + 1 > acct_conc then
  limited('account:max_concurrent:' .. acct_conc, 1000)
end
local key_conc = limit_of(kc[6])
local key_inflight = 0
if key_conc then
  key_inflight = tonumber(redis.call('HGET', KEYS[8], 'n:' .. kid)) or 0
  if key_inflight + 1 > key_conc then limited('key:max_concurrent:' .. key_conc, 1000) end
end
for _, w in ipairs(windows) do
  -- Wait until enough of the oldest entries have left the window.
  if w.rpm and w.count + 1 > w.rpm then
    local e = redis.call('ZRANGE', w.zkey, w.count - w.rpm, w.count - w.rpm, 'WITHSCORES')
    limited(w.scope .. ':requests_per_minute:' .. w.rpm, math.max(tonumber(e[2]) + PER_MIN - now, 1))
  end
  if w.tpm and tokens > w.tpm then
    limited(w.scope .. ':tokens_per_minute:' .. w.tpm, -2)
  elseif w.tpm and w.sum + tokens > w.tpm then
    local wait, freed = PER_MIN, 0
    local e = redis.call('ZRANGE', w.zkey, 0, 199, 'WITHSCORES')
    for i = 1, #e, 2 do
      freed = freed + (tonumber(string.match(e[i], ':(%d+)$')) or 0)
      if w.sum - freed + tokens <= w.tpm then
        wait = math.max(tonumber(e[i + 1]) + PER_MIN - now, 1)
        break
      end
    end
    limited(w.scope .. ':tokens_per_minute:' .. w.tpm, wait)
  end
end
if worst then
  return answer('rate_limit_exceeded', '', worst, worst_wait == math.huge and -1 or worst_wait, false)
end
-- <<< limits

redis.call('HSET', KEYS[3], rid, amount)
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), rid)
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HINCRBY', KEYS[5], 'admitted', 1)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[5]))

-- >>> limits: enter the windows, count the key's hold; remember what for settlement
for _, w in ipairs(windows) do
  redis.call('ZADD', w.zkey, now, rid .. ':' .. string.format('%d', tokens))
  redis.call('PEXPIRE', w.zkey, 2 * PER_MIN)
  redis.call('HSET', KEYS[8], w.sumfield, string.format('%d', w.sum + tokens))
end
local in_acct = (windows[1] and windows[1].scope == 'account') and 1 or 0
local in_key = (windows[#windows] and windows[#windows].scope == 'key') and 1 or 0
local key_held = key_cap and amount or 0
if key_held > 0 then redis.call('HINCRBY', KEYS[8], 'h:' .. kid, key_held) end
if key_conc then redis.call('HINCRBY', KEYS[8], 'n:' .. kid, 1) end
if key_held > 0 or key_conc or in_acct + in_key > 0 then
  redis.call('HSET', KEYS[9], rid, table.concat({kid, string.format('%d', key_held), key_conc and 1 or 0,
    in_acct, in_key, string.format('%d', tokens), string.format('%d', now)}, '|'))
end
-- <<< limits
held = held + amount
return answer('ok', table.concat(warnings, ','), '', 0, true)
