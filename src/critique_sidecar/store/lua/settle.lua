-- Settlement, atomically and once per request id: release the hold, charge, roll up, record.
-- KEYS: 1 acct  2 holds  3 holdexp  4 day  5 month  6 done marker  7 usage stream
--       8 limiter state  9 hold info  10 the account's minute window  11 the key's (limits)
--       12 settings  13 notification outbox (observe)
-- ARGV: 1 request id  2 charge (micro-credits)  3 window ttl s  4 done ttl s
--       5 the usage record: a JSON array of field/value strings (one argument, not 28: each
--         argument costs the client packing time on every request)
--       6 model  7 key id  8 input tokens  9 output tokens
--       10 day  11 month  12 now ms (observe: notification windows)
-- Returns {applied (1|0), charged micro-credits}

-- Validation (issue 14): everything is checked before anything changes, so a settlement Redis
-- cannot apply fails whole, with an error naming why (store/redis_ledger.py turns it into a
-- rejection, not an outage), never half way (a hold released without its charge).
do
  local function reject(why) return redis.error_reply('CRITIQUE_REJECTED ' .. why) end
  -- Non-negative integers below 2^53 (exact in a Lua number, safe for HINCRBY).
  local function count(v) return type(v) == 'string' and #v <= 15 and v:match('^%d+$') ~= nil end
  for i, name in pairs({[2] = 'charge', [3] = 'window ttl', [4] = 'done ttl', [8] = 'input tokens', [9] = 'output tokens'}) do
    if not count(ARGV[i]) then return reject(name .. ' is not a non-negative integer below 2^53') end
  end
  local ok, fields = pcall(cjson.decode, ARGV[5])
  if not ok or type(fields) ~= 'table' or #fields == 0 or #fields % 2 ~= 0 then
    return reject('usage record is not a field/value list')
  end
  for _, v in ipairs(fields) do
    if type(v) ~= 'string' then return reject('usage record values must be strings') end
  end
  local want = {'hash', 'hash', 'zset', 'hash', 'hash', 'string', 'stream'}
  for i, kind in ipairs(want) do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' and t ~= kind then return reject('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t) end
  end
  local a = redis.call('HMGET', KEYS[1], 'balance', 'held')
  for i = 1, 2 do
    if a[i] and not tostring(a[i]):match('^%-?%d+$') then return reject('account hash holds a non-integer') end
  end
  local balance = tonumber(a[1]) or 0
  if balance - tonumber(ARGV[2]) < -9007199254740991 then return reject('balance would underflow') end
end

local done = redis.call('GET', KEYS[6])
if done then return {0, tonumber(done)} end

local rid, charge = ARGV[1], tonumber(ARGV[2])
local amt = redis.call('HGET', KEYS[2], rid)
if amt then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(amt))
  redis.call('HDEL', KEYS[2], rid)
end
redis.call('ZREM', KEYS[3], rid)
if charge ~= 0 then redis.call('HINCRBY', KEYS[1], 'balance', -charge) end

local inp, out = tonumber(ARGV[8]), tonumber(ARGV[9])
local m, k = 'm:' .. ARGV[6] .. ':', 'k:' .. ARGV[7] .. ':'
for _, p in ipairs({'', m, k}) do
  redis.call('HINCRBY', KEYS[4], p .. 'credits', charge)
  redis.call('HINCRBY', KEYS[4], p .. 'requests', 1)
  redis.call('HINCRBY', KEYS[4], p .. 'in', inp)
  redis.call('HINCRBY', KEYS[4], p .. 'out', out)
end
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[5], 'credits', charge)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[3]))

-- >>> limits: undo what admission counted for this hold (place_hold.lua's hold info): the
-- key's held credits and in-flight count; in the minute windows, the token bound becomes the
-- tokens actually used (if the entry is still in its window).
if KEYS[9] then
  local info = redis.call('HGET', KEYS[9], rid)
  if info then
    local k, h, n, wa, wk, bound = string.match(info, '^(.-)|(%d+)|(%d+)|(%d)|(%d)|(%d+)|')
    if k then
      if tonumber(h) > 0 and redis.call('HINCRBY', KEYS[8], 'h:' .. k, -tonumber(h)) <= 0 then
        redis.call('HDEL', KEYS[8], 'h:' .. k)
      end
      if n == '1' and redis.call('HINCRBY', KEYS[8], 'n:' .. k, -1) <= 0 then
        redis.call('HDEL', KEYS[8], 'n:' .. k)
      end
      local used = string.format('%d', inp + out)
      for _, w in ipairs({{wa, KEYS[10], 'tw'}, {wk, KEYS[11], 'tw:' .. k}}) do
        local entry = rid .. ':' .. bound
        local at = w[1] == '1' and redis.call('ZSCORE', w[2], entry)
        if at then
          redis.call('ZREM', w[2], entry)
          redis.call('ZADD', w[2], at, rid .. ':' .. used)
          local sum = (tonumber(redis.call('HGET', KEYS[8], w[3])) or 0) + (inp + out) - tonumber(bound)
          redis.call('HSET', KEYS[8], w[3], string.format('%d', math.max(sum, 0)))
        end
      end
    end
    redis.call('HDEL', KEYS[9], rid)
  end
end
-- <<< limits

-- No MAXLEN here: a length cap could drop records the billing consumer has not acknowledged.
-- Retention trims instead (store/usage_retention.py).
redis.call('XADD', KEYS[7], '*', unpack(cjson.decode(ARGV[5])))

-- observe (issue 20): budget notifications. KEYS: 12 settings  13 notification outbox stream
-- ARGV: 10 day  11 month  12 now ms. Once per threshold, window and account: the marker is a
-- field of the window's own rollup hash (HSETNX, in this same atomic script), so several
-- sidecars settling at once queue one event, and the marker expires with its window.
-- The charge is already written above: a key of the wrong type here must not fail the script
-- half way, so notifications are skipped instead (nothing is queued; the charge stands).
local function is(key, kind) local t = redis.call('TYPE', key)['ok'] return t == 'none' or t == kind end
local ns = {}
if is(KEYS[12], 'hash') and is(KEYS[13], 'stream') then
  ns = redis.call('HMGET', KEYS[12], 'notify_url', 'notify_thresholds', 'notify_low_balance',
    'daily_credit_cap', 'monthly_credit_cap', 'daily_request_cap')
end
if ns[1] then
  local bal = tonumber(redis.call('HGET', KEYS[1], 'balance')) or 0
  local function notify(kind, window, pct, used, limit, marker_key, marker)
    if redis.call('HSETNX', marker_key, marker, 1) == 1 then
      redis.call('XADD', KEYS[13], 'MAXLEN', '~', 10000, '*', 'kind', kind, 'window', window,
        'threshold_percent', pct, 'used', used, 'limit', limit, 'balance', bal,
        'request_id', rid, 'ts_ms', ARGV[12])
      redis.call('PUBLISH', 'crt:notify:wake', KEYS[13])  -- wakes the delivery workers at once
    end
  end
  if ns[2] then
    local caps = {
      {'daily_credit_cap', tonumber(ns[4]), KEYS[4], 'credits', ARGV[10]},
      {'monthly_credit_cap', tonumber(ns[5]), KEYS[5], 'credits', ARGV[11]},
      {'daily_request_cap', tonumber(ns[6]), KEYS[4], 'requests', ARGV[10]},
    }
    for _, c in ipairs(caps) do
      if c[2] and c[2] > 0 then
        local used = tonumber(redis.call('HGET', c[3], c[4])) or 0
        for p in string.gmatch(ns[2], '%d+') do
          if used * 100 >= c[2] * tonumber(p) then
            notify(c[1], c[5], p, used, c[2], c[3], 'notified:' .. c[1] .. ':' .. p)
          end
        end
      end
    end
  end
  local low = tonumber(ns[3])
  if low then  -- once per fall to the level; re-armed when a settlement finds the balance above it
    if bal <= low then notify('low_balance', '', '', bal, low, KEYS[1], 'notified:low_balance')
    else redis.call('HDEL', KEYS[1], 'notified:low_balance') end
  end
end
-- end observe
redis.call('SET', KEYS[6], charge, 'EX', tonumber(ARGV[4]))
return {1, charge}
