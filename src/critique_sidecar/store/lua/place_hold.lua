-- Admission, atomically: release expired holds, check the key's controls, the account's switch,
-- every limit that is set (core/limit_table.py, one loop per mechanism) and the balance over the
-- floor, then hold the request's maximum cost. K_*, A_*, REPLY and the limit table:
-- store/lua_contract.py.
-- Nothing is read or written for a limit that is not set.
local rid, amount, now = A_request_id, tonumber(A_amount), tonumber(A_now_ms)
local kid, model, tokens = A_key_id or '', A_model or '', tonumber(A_tokens) or 0
local eu = A_end_user or ''  -- the request's end user ('' when none: no end-user limit applies)
local PER_MIN = 60000  -- the rate limits' window, ms

--#include hold_counters
--#include spend_rate
--#include grants

-- Release holds whose owner never settled (bounded per call; every admission sweeps).
-- Their credits return to the grants they were allocated on (on an expired grant they expire).
local stale = redis.call('ZRANGEBYSCORE', K_hold_expiry, '-inf', now, 'LIMIT', 0, 100)
local grants_exist = #stale > 0 and redis.call('EXISTS', K_grants) == 1
for _, old in ipairs(stale) do
  local value = redis.call('HGET', K_holds, old)
  local amt = hold_amount(value)
  if amt then
    redis.call('HINCRBY', K_account, 'held', -amt)
    if grants_exist then grants_release(K_grants, K_grants_done, K_account, value, amt, now) end
    redis.call('HDEL', K_holds, old)
  end
  redis.call('ZREM', K_hold_expiry, old)
  local info = redis.call('HGET', K_hold_info, old)
  if info then
    local k, h, n = read_hold_info(info)
    if k then release_counters(k, h, n) end
    release_end_user(info)
    redis.call('HDEL', K_hold_info, old)
  end
end

-- Grants: an account from before them gets its `legacy` grant; the sweep brings grants whose
-- time came into the balance and expires those past their expiry, before the balance is read.
-- A grant nearing its expiry is announced to the account's webhook once (grant.expiring; the
-- marker is a field of the account hash, set in this same script); like the trips below, an
-- outbox of the wrong type skips the event, never the admission.
local notice_ms, notify_set = tonumber(A_grant_notice_ms) or 0, nil
local function expiring(g)
  if notice_ms <= 0 or g.expires - now > notice_ms or g.remaining <= 0 then return end
  if notify_set == nil then notify_set = redis.call('HGET', K_settings, 'notify_url') and true or false end
  if not notify_set then return end
  local t = redis.call('TYPE', K_notify_outbox)['ok']
  if t ~= 'none' and t ~= 'stream' then return end
  if redis.call('HSETNX', K_account, 'notified:grant:' .. g.id, 1) == 0 then return end
  redis.call('XADD', K_notify_outbox, 'MAXLEN', '~', 10000, '*', 'kind', 'grant_expiring', 'grant_id', g.id,
    'category', g.category, 'remaining', string.format('%d', g.remaining), 'expires_ms', string.format('%d', g.expires),
    'balance', redis.call('HGET', K_account, 'balance') or '0', 'request_id', rid, 'ts_ms', string.format('%d', now))
  redis.call('PUBLISH', 'crt:notify:wake', K_notify_outbox)
end
local live_grants = nil
if grants_migrate(K_grants, K_account, now) then
  live_grants = grants_sweep(K_grants, K_grants_done, K_account, now, expiring)
end

local s = redis.call('HMGET', K_settings, 'enabled', 'reserve_floor', 'block_when_cap_reached',
  'training_opt_in', unpack(ACCOUNT_LIMIT_FIELDS))
local SETTINGS_BEFORE_LIMITS = 4
local kc = redis.call('HMGET', K_key_controls, 'expires_at_ms', 'models', unpack(KEY_LIMIT_FIELDS))
local optin = (s[4] == '1') and 1 or 0
local a = redis.call('HMGET', K_account, 'balance', 'held')
local balance, held = tonumber(a[1]) or 0, tonumber(a[2]) or 0
local floor = tonumber(s[2]) or 0

-- The limits that are set, by their position in the table (the order they are checked in): a
-- stored value counts only when it is an integer >= the row's least.
local rows, values = {}, {}
local function collect(stored, first, count, row_of)
  for i = 1, count do
    local raw = stored[first + i]
    if raw and string.find(raw, '^%d+$') then
      local row = row_of(i)
      if tonumber(raw) >= row.least then rows[row.position], values[row.position] = row, tonumber(raw) end
    end
  end
end
collect(s, SETTINGS_BEFORE_LIMITS, #ACCOUNT_LIMIT_FIELDS, ACCOUNT_LIMIT)
collect(kc, 2, #KEY_LIMIT_FIELDS, KEY_LIMIT)
-- Per-end-user limits: the account's values are defaults, an end user's own hash overrides
-- them; a request naming no end user is under none of them.
if eu ~= '' then
  local own = redis.call('HMGET', K_end_user_limits, unpack(END_USER_FIELDS))
  collect(own, 0, #END_USER_FIELDS, function(j) return ACCOUNT_LIMIT(END_USER_INDEX[j]) end)
else
  for _, i in ipairs(END_USER_INDEX) do rows[ACCOUNT_LIMIT(i).position] = nil end
end
-- The window a rate row counts in, and how a refusal names the row (X-Critique-Limit).
local function scope_of(row) return row.each == 'end_user' and 'end_user' or row.scope end
local function named(row)
  if row.each == 'end_user' then return 'end_user:' .. string.sub(row.name, 10) end
  return row.scope .. ':' .. row.name
end

-- Sliding-window logs, per scope with a rate limit set: a sorted set of every request admitted
-- in the last minute ("<request id>:<tokens>" scored by admission ms); the limiter hash keeps
-- the tokens' sum. Requests in the window = the set's size; exact at any concurrency.
local windows, by_scope = {}, {}
local function window(scope)
  if by_scope[scope] then return by_scope[scope] end
  local zkey = (scope == 'key' and K_key_window) or (scope == 'end_user' and K_end_user_window) or K_account_window
  local sumfield = (scope == 'key' and ('tw:' .. kid)) or (scope == 'end_user' and ('tw:u:' .. eu)) or 'tw'
  local sum = tonumber(redis.call('HGET', K_limiter, sumfield)) or 0
  -- Entries leave the window here (bounded per call; each is removed once: amortised O(1)).
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - PER_MIN, 'LIMIT', 0, 500)
  if #old > 0 then
    for _, m in ipairs(old) do sum = sum - (tonumber(string.match(m, ':(%d+)$')) or 0) end
    if sum < 0 then sum = 0 end
    redis.call('ZREMRANGEBYRANK', zkey, 0, #old - 1)
    redis.call('HSET', K_limiter, sumfield, string.format('%d', sum))
  end
  local count = redis.call('ZCARD', zkey)
  if count == 0 then sum = 0 end  -- the set expired (idle two minutes): its sum went with it
  local oldest = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  local reset = oldest[2] and math.max(tonumber(oldest[2]) + PER_MIN - now, 0) or 0
  local w = {zkey = zkey, sumfield = sumfield, scope = scope, count = count, sum = sum, reset = reset}
  by_scope[scope] = w
  windows[#windows + 1] = w
  return w
end
for p = 1, LIMIT_COUNT do
  if rows[p] and rows[p].mechanism == 'rate' then window(scope_of(rows[p]))[rows[p].unit] = values[p] end
end

-- The tightest requests and tokens limit (least remaining), as the x-ratelimit-* headers show it.
local function status(admitted)
  local out = {-1, -1, -1, -1, -1, -1}
  local extra = admitted and 1 or 0
  for _, w in ipairs(windows) do
    local reset = (admitted and w.count == 0) and PER_MIN or w.reset
    if w.requests then
      local left = math.max(w.requests - w.count - extra, 0)
      if out[1] < 0 or left < out[2] or (left == out[2] and w.requests < out[1]) then
        out[1], out[2], out[3] = w.requests, left, reset
      end
    end
    if w.tokens then
      local left = math.max(w.tokens - w.sum - extra * tokens, 0)
      if out[4] < 0 or left < out[5] or (left == out[5] and w.tokens < out[4]) then
        out[4], out[5], out[6] = w.tokens, left, reset
      end
    end
  end
  return out
end

local function answer(code, warnings, control, retry, admitted)
  local st = status(admitted)
  return REPLY{code = code, warnings = warnings, training_opt_in = optin, balance = balance, floor = floor,
    held = held, control = control, retry_ms = retry, requests_limit = st[1], requests_remaining = st[2],
    requests_reset_ms = st[3], tokens_limit = st[4], tokens_remaining = st[5], tokens_reset_ms = st[6]}
end

local function refuse(code, control)
  return answer(code, '', control or '', 0, false)
end

if redis.call('HEXISTS', K_holds, rid) == 1 then
  return refuse('ok')  -- a repeated admission: already held
end

-- The key's own controls come first (a dead or restricted key explains itself).
local expires = tonumber(kc[1])
if expires and now >= expires then return refuse('key_expired', kc[1]) end
if kc[2] and #kc[2] > 2 and not string.find(kc[2], ',' .. model .. ',', 1, true) then
  return refuse('model_not_allowed', model)
end

if s[1] == '0' then return refuse('inference_disabled') end

-- A spend rate that refuses is announced to the account's webhook once per window, limit and
-- key (the marker in the limiter names the window last announced): a runaway loop trips it
-- many times a second, the receiver hears of it once. Like settle.lua's budget notifications,
-- an outbox of the wrong type skips the event, never the refusal.
local function tripped(row, limit, used)
  if not redis.call('HGET', K_settings, 'notify_url') then return end
  local size = row.window == 'minute' and MINUTE_MS or HOUR_MS
  local start = string.format('%d', math.floor(now / size) * size)
  local marker = 'trip:' .. row.scope .. ':' .. row.name .. (row.scope == 'key' and (':' .. kid) or '')
  if redis.call('HGET', K_limiter, marker) == start then return end
  local t = redis.call('TYPE', K_notify_outbox)['ok']
  if t ~= 'none' and t ~= 'stream' then return end
  redis.call('HSET', K_limiter, marker, start)
  redis.call('XADD', K_notify_outbox, 'MAXLEN', '~', 10000, '*', 'kind', row.name, 'scope', row.scope,
    'key_id', row.scope == 'key' and kid or '', 'window', start, 'used', string.format('%d', used),
    'limit', string.format('%d', limit), 'balance', string.format('%d', balance), 'request_id', rid,
    'ts_ms', string.format('%d', now))
  redis.call('PUBLISH', 'crt:notify:wake', K_notify_outbox)
end

-- Caps: the window's counter plus what is in flight plus this request, against the cap.
local hard = s[3] ~= '0'
local warnings = {}
local function prefix(scope) return scope == 'key' and ('k:' .. kid .. ':') or '' end
local key_held = nil  -- the key's open holds, read once when a key credit cap is set
local eu_held = nil  -- the end user's open holds, read once when an end-user credit cap applies
for p = 1, LIMIT_COUNT do
  local row = rows[p]
  if row and row.mechanism == 'cap' then
    local counters = row.window == 'month' and K_month or K_day
    local used
    if row.unit == 'credits' then
      local open = held
      if row.scope == 'key' then
        key_held = key_held or tonumber(redis.call('HGET', K_limiter, 'h:' .. kid)) or 0
        open = key_held
      elseif row.each == 'end_user' then
        eu_held = eu_held or tonumber(redis.call('HGET', K_limiter, 'hu:' .. eu)) or 0
        open = eu_held
      end
      local settled
      if row.each == 'end_user' then  -- the day's rollup per end user, or the month's counter
        settled = row.window == 'month' and tonumber(redis.call('HGET', K_end_user_month, eu))
          or tonumber(redis.call('HGET', K_end_user_counts, 'c:' .. eu))
        settled = settled or 0
      elseif row.window == 'minute' or row.window == 'hour' then  -- a spend rate
        settled = spent_in(row.scope == 'key' and ('sp:' .. kid) or 'sp', row.window, now)
      else
        settled = tonumber(redis.call('HGET', counters, prefix(row.scope) .. 'credits')) or 0
      end
      used = settled + open + amount
    else
      used = (tonumber(redis.call('HGET', counters, prefix(row.scope) .. 'admitted')) or 0) + 1
    end
    if used > values[p] then
      if row.window == 'minute' or row.window == 'hour' then tripped(row, values[p], used) end
      if hard or not row.soft then return refuse(row.code, string.format('%d', values[p])) end
      warnings[#warnings + 1] = row.code
    end
  end
end

-- The floor and the balance are always hard.
if balance - floor - held < amount then return refuse('insufficient_credits') end

-- Rate and concurrency limits, always hard: refused with the control that needs the longest wait.
local worst, worst_wait = nil, -1
local function limited(row, limit, wait)  -- wait: ms until it fits; -2: it never can
  if wait == -2 then wait = math.huge end
  if wait > worst_wait then worst, worst_wait = named(row) .. ':' .. limit, wait end
end
local key_in_flight = false  -- count this request in the key's in-flight counter
for p = 1, LIMIT_COUNT do
  local row, limit = rows[p], values[p]
  if not row then  -- nothing set at this position
  elseif row.mechanism == 'concurrency' then
    local in_flight
    if row.scope == 'key' then
      key_in_flight = true
      in_flight = tonumber(redis.call('HGET', K_limiter, 'n:' .. kid)) or 0
    else
      in_flight = redis.call('ZCOUNT', K_hold_expiry, '(' .. now, '+inf')
    end
    if in_flight + 1 > limit then limited(row, limit, 1000) end
  elseif row.mechanism == 'rate' then
    local w = by_scope[scope_of(row)]
    if row.unit == 'requests' and w.count + 1 > limit then
      -- Wait until enough of the oldest entries have left the window.
      local e = redis.call('ZRANGE', w.zkey, w.count - limit, w.count - limit, 'WITHSCORES')
      limited(row, limit, math.max(tonumber(e[2]) + PER_MIN - now, 1))
    elseif row.unit == 'tokens' and tokens > limit then
      limited(row, limit, -2)
    elseif row.unit == 'tokens' and w.sum + tokens > limit then
      local wait, freed = PER_MIN, 0
      local e = redis.call('ZRANGE', w.zkey, 0, 199, 'WITHSCORES')
      for i = 1, #e, 2 do
        freed = freed + (tonumber(string.match(e[i], ':(%d+)$')) or 0)
        if w.sum - freed + tokens <= limit then
          wait = math.max(tonumber(e[i + 1]) + PER_MIN - now, 1)
          break
        end
      end
      limited(row, limit, wait)
    end
  end
end
if worst then
  return answer('rate_limit_exceeded', '', worst, worst_wait == math.huge and -1 or worst_wait, false)
end

-- The hold names its key (set_key_controls.lua) and the grants it holds credits on, in spend order.
local allocation = ''
if live_grants then
  local alloc = grants_allocate(live_grants, amount)
  for _, p in ipairs(alloc) do
    p[1].held = p[1].held + p[2]
    grant_store(K_grants, K_grants_done, p[1], now)
  end
  allocation = allocation_format(alloc)
end
redis.call('HSET', K_holds, rid, string.format('%d', amount) .. ':' .. kid .. '|' .. allocation)
redis.call('ZADD', K_hold_expiry, tonumber(A_expires_ms), rid)
redis.call('HINCRBY', K_account, 'held', amount)
-- The request counters of every request cap in the table (set or not: a cap set mid-window
-- sees the window's admissions); credit counters are written by settlement.
for _, c in ipairs(REQUEST_COUNTERS) do
  local counters = c[1] == 'month' and K_month or K_day
  redis.call('HINCRBY', counters, prefix(c[2]) .. 'admitted', 1)
  redis.call('EXPIRE', counters, tonumber(A_window_ttl_s))
end

-- Enter the minute windows and the key's counters; remember what for settlement.
for _, w in ipairs(windows) do
  redis.call('ZADD', w.zkey, now, rid .. ':' .. string.format('%d', tokens))
  redis.call('PEXPIRE', w.zkey, 2 * PER_MIN)
  redis.call('HSET', K_limiter, w.sumfield, string.format('%d', w.sum + tokens))
end
local in_acct = by_scope['account'] and 1 or 0
local in_key = by_scope['key'] and 1 or 0
local key_hold = key_held and amount or 0
local eu_hold = eu_held and amount or 0
if key_hold > 0 then redis.call('HINCRBY', K_limiter, 'h:' .. kid, key_hold) end
if eu_hold > 0 then redis.call('HINCRBY', K_limiter, 'hu:' .. eu, eu_hold) end
if key_in_flight then redis.call('HINCRBY', K_limiter, 'n:' .. kid, 1) end
if key_hold > 0 or key_in_flight or in_acct + in_key > 0 or eu_hold > 0 then
  local fields = {kid, string.format('%d', key_hold), key_in_flight and 1 or 0, in_acct, in_key,
    string.format('%d', tokens), string.format('%d', now)}
  if eu_hold > 0 then  -- the end user last: its id may hold any printable character
    fields[#fields + 1] = string.format('%d', eu_hold)
    fields[#fields + 1] = eu
  end
  redis.call('HSET', K_hold_info, rid, table.concat(fields, '|'))
end
held = held + amount
return answer('ok', table.concat(warnings, ','), '', 0, true)
