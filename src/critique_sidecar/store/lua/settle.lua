-- Settlement, atomically and once per request id: release the hold, charge, roll up, record.
-- K_*, A_*, REPLY and the limit table: store/lua_contract.py.
local rid = A_request_id
local done = redis.call('GET', K_done)
if done then return REPLY{applied = 0, charged = tonumber(done)} end

--#include hold_counters
--#include spend_rate
--#include grants

-- Validation: everything is checked before anything changes, so a settlement Redis cannot apply
-- fails whole, with an error naming why (store/redis_ledger.py turns it into a rejection, not an
-- outage), never half way (a hold released without its charge). Keys that are read before the
-- first write need no type check: the read itself fails first.
local function reject(why) return redis.error_reply('CRITIQUE_REJECTED ' .. why) end
-- Non-negative integers below 2^53 (exact in a Lua number, safe for HINCRBY).
local function count(v) return type(v) == 'string' and #v <= 15 and v:match('^%d+$') ~= nil end
for name, value in pairs({charge = A_charge, window_ttl_s = A_window_ttl_s, done_ttl_s = A_done_ttl_s,
                          input_tokens = A_input_tokens, output_tokens = A_output_tokens, now_ms = A_now_ms}) do
  if not count(value) then return reject(name .. ' is not a non-negative integer below 2^53') end
end
local ok, fields = pcall(cjson.decode, A_record)
if not ok or type(fields) ~= 'table' or #fields == 0 or #fields % 2 ~= 0 then
  return reject('usage record is not a field/value list')
end
for _, v in ipairs(fields) do
  if type(v) ~= 'string' then return reject('usage record values must be strings') end
end
local a = redis.call('HMGET', K_account, 'balance', 'held')
for i = 1, 2 do
  if a[i] and not tostring(a[i]):match('^%-?%d+$') then return reject('account hash holds a non-integer') end
end
local charge = tonumber(A_charge)
if (tonumber(a[1]) or 0) - charge < -9007199254740991 then return reject('balance would underflow') end
local hold = redis.call('HGET', K_holds, rid)
local amt = hold_amount(hold)
local info = redis.call('HGET', K_hold_info, rid)
-- What the account set that this settlement feeds: webhooks, and spend rates (whose window
-- spend is kept only while one is set: an account without pays nothing for them).
local notify = redis.pcall('HMGET', K_settings, 'notify_url', 'notify_thresholds', 'notify_low_balance',
  'credits_per_minute', 'credits_per_hour')
local account_spend = charge > 0 and not notify.err and (notify[4] or notify[5]) and true or false
local written = {{K_hold_expiry, 'zset'}, {K_day, 'hash'}, {K_month, 'hash'}, {K_usage, 'stream'},
  {K_grants, 'hash'}, {K_grants_done, 'stream'}}
if info or account_spend then written[#written + 1] = {K_limiter, 'hash'} end
if A_end_user ~= '' then
  written[#written + 1] = {K_end_users, 'zset'}
  written[#written + 1] = {K_end_user_counts, 'hash'}
  written[#written + 1] = {K_end_user_month, 'hash'}
end
local function typed(key, kind) local t = redis.call('TYPE', key)['ok'] return t == 'none' or t == kind, t end
for _, w in ipairs(written) do
  local fits, t = typed(w[1], w[2])
  if not fits then return reject('WRONGTYPE ' .. w[1] .. ' is a ' .. t) end
end
-- Notifications never fail a charge: keys of the wrong type skip them (nothing is queued).
if notify.err or (notify[1] and not typed(K_notify_outbox, 'stream')) then notify = {} end

-- An account from before grants gets its `legacy` grant first (its balance, its open holds this
-- one included), as at admission: so the balance is always the grants' remaining.
local now = tonumber(A_now_ms)
local has_grants = grants_migrate(K_grants, K_account, now)

-- The charge: release the hold, take the credits.
if amt then
  redis.call('HINCRBY', K_account, 'held', -amt)
  redis.call('HDEL', K_holds, rid)
end
redis.call('ZREM', K_hold_expiry, rid)
if charge ~= 0 then redis.call('HINCRBY', K_account, 'balance', -charge) end
-- The grants pay (lib/grants.lua): the hold's allocation in its order, each grant's part of the
-- hold released (on an expired grant, the part not charged expires now); a charge beyond it
-- (a hold already swept) from the grants' available in spend order, the rest as debt (an
-- account with nothing granted included).
local paid = {order = {}}
if has_grants or charge > 0 then
  local left = charge
  if amt then left = grants_charge(K_grants, K_grants_done, K_account, hold, amt, charge, now, paid) end
  if left > 0 then
    grants_draw_available(K_grants, K_grants_done, grants_sweep(K_grants, K_grants_done, K_account, now, nil),
      left, now, paid, true)
  end
end

-- The day's rollups (the dashboard's totals, per model, per key and per endpoint; key caps
-- count these).
local inp, out = tonumber(A_input_tokens), tonumber(A_output_tokens)
for _, p in ipairs({'', 'm:' .. A_model .. ':', 'k:' .. A_key_id .. ':', 'e:' .. A_endpoint .. ':'}) do
  redis.call('HINCRBY', K_day, p .. 'credits', charge)
  redis.call('HINCRBY', K_day, p .. 'requests', 1)
  redis.call('HINCRBY', K_day, p .. 'in', inp)
  redis.call('HINCRBY', K_day, p .. 'out', out)
end
redis.call('EXPIRE', K_day, tonumber(A_window_ttl_s))
-- Per end user, beside the day hash (so reading the day never reads every end user): credits
-- in a sorted set, where the top N is a range; the counts in a hash, read for the N shown.
-- Requests without an end user (most) touch neither.
if A_end_user ~= '' then
  local u = A_end_user
  redis.call('ZINCRBY', K_end_users, charge, u)
  redis.call('HINCRBY', K_end_user_counts, 'c:' .. u, charge)
  redis.call('HINCRBY', K_end_user_counts, 'r:' .. u, 1)
  redis.call('HINCRBY', K_end_user_counts, 'i:' .. u, inp)
  redis.call('HINCRBY', K_end_user_counts, 'o:' .. u, out)
  redis.call('EXPIRE', K_end_users, tonumber(A_window_ttl_s))
  redis.call('EXPIRE', K_end_user_counts, tonumber(A_window_ttl_s))
  -- The month's credits per end user: what an end-user monthly cap counts (the day's: c:<id>).
  redis.call('HINCRBY', K_end_user_month, u, charge)
  redis.call('EXPIRE', K_end_user_month, tonumber(A_window_ttl_s))
end
-- The credit counters of the table's monthly credit caps (the day's are the rollups).
for _, c in ipairs(CREDIT_COUNTERS) do
  if c[1] == 'month' then
    redis.call('HINCRBY', K_month, (c[2] == 'key' and ('k:' .. A_key_id .. ':') or '') .. 'credits', charge)
    redis.call('EXPIRE', K_month, tonumber(A_window_ttl_s))
  end
end

-- The spend rates' minute and hour: the account's while it has a spend rate; the key's while
-- it has a credit limit (its hold was counted in the key's held credits: the hold info says so).
if account_spend then add_spend('sp', charge, tonumber(A_now_ms)) end

-- Undo what admission counted for this hold: the key's held credits and in-flight count; in
-- the minute windows, the token bound becomes the tokens used (if the entry is still there).
if info then
  local k, h, n, wa, wk, bound = read_hold_info(info)
  release_end_user(info)
  if k then
    release_counters(k, h, n)
    if charge > 0 and tonumber(h) > 0 then add_spend('sp:' .. k, charge, tonumber(A_now_ms)) end
    local used = string.format('%d', inp + out)
    for _, w in ipairs({{wa, K_account_window, 'tw'}, {wk, K_key_window, 'tw:' .. k}}) do
      local entry = rid .. ':' .. bound
      local at = w[1] == '1' and redis.call('ZSCORE', w[2], entry)
      if at then
        redis.call('ZREM', w[2], entry)
        redis.call('ZADD', w[2], at, rid .. ':' .. used)
        local sum = (tonumber(redis.call('HGET', K_limiter, w[3])) or 0) + (inp + out) - tonumber(bound)
        redis.call('HSET', K_limiter, w[3], string.format('%d', math.max(sum, 0)))
      end
    end
  end
  redis.call('HDEL', K_hold_info, rid)
end

-- No MAXLEN here: a length cap could drop records the billing consumer has not acknowledged.
-- Retention trims instead (store/usage_retention.py).
-- paid_by: "<grant>:<micro-credits>,..." in the order they paid (the caller's value is a placeholder).
local paid_at = nil
for i = 1, #fields, 2 do
  if fields[i] == 'paid_by' then paid_at = i + 1 end
end
if not paid_at then paid_at = #fields + 2; fields[paid_at - 1] = 'paid_by' end
fields[paid_at] = paid_format(paid)
redis.call('XADD', K_usage, '*', unpack(fields))

-- Budget notifications, only for accounts that set a webhook. Once per threshold, window and
-- account: the marker is a field of the window's counter hash (HSETNX, in this same atomic
-- script), so several sidecars settling at once queue one event, and it expires with its window.
if notify[1] then
  local bal = tonumber(redis.call('HGET', K_account, 'balance')) or 0
  local function queue(kind, window, pct, used, limit, marker_key, marker)
    if redis.call('HSETNX', marker_key, marker, 1) == 1 then
      redis.call('XADD', K_notify_outbox, 'MAXLEN', '~', 10000, '*', 'kind', kind, 'window', window,
        'threshold_percent', pct, 'used', used, 'limit', limit, 'balance', bal,
        'request_id', rid, 'ts_ms', A_now_ms)
      redis.call('PUBLISH', 'crt:notify:wake', K_notify_outbox)  -- wakes the delivery workers at once
    end
  end
  if notify[2] then  -- thresholds: percent of each account cap that is set
    local caps = {}
    for i = 1, #ACCOUNT_LIMIT_FIELDS do
      local row = ACCOUNT_LIMIT(i)
      if row.mechanism == 'cap' and row.each ~= 'end_user' and (row.window == 'day' or row.window == 'month') then
        caps[#caps + 1] = row
      end
    end
    local fields_ = {}
    for i, row in ipairs(caps) do fields_[i] = row.field end
    local values = redis.call('HMGET', K_settings, unpack(fields_))
    for i, row in ipairs(caps) do
      local cap = tonumber(values[i])
      if cap and cap > 0 then
        local counters = row.window == 'month' and K_month or K_day
        local window = row.window == 'month' and A_month or A_day
        local used = tonumber(redis.call('HGET', counters, row.unit == 'credits' and 'credits' or 'requests')) or 0
        for p in string.gmatch(notify[2], '%d+') do
          if used * 100 >= cap * tonumber(p) then
            queue(row.name, window, p, used, cap, counters, 'notified:' .. row.name .. ':' .. p)
          end
        end
      end
    end
  end
  local low = tonumber(notify[3])
  if low then  -- once per fall to the level; re-armed when a settlement finds the balance above it
    if bal <= low then queue('low_balance', '', '', bal, low, K_account, 'notified:low_balance')
    else redis.call('HDEL', K_account, 'notified:low_balance') end
  end
end

redis.call('SET', K_done, charge, 'EX', tonumber(A_done_ttl_s))
return REPLY{applied = 1, charged = charge}
