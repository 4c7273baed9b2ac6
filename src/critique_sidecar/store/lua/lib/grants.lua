-- Credit grants (docs/design.md, "Grants"). An account's grants are one hash, grant id ->
-- "remaining|held|priority|expires ms|effective ms|category|created ms|amount|state", state
-- w (waiting: not yet effective, not in the balance), a (active) or x (expired: keeps only what
-- open holds hold on it). expires 0: never; effective 0: at once. The account hash's `balance`
-- is the sum of `remaining` over a and x grants, `held` the sum of open holds, `expired` what
-- expired unspent. Exhausted and fully expired grants leave the hash for the capped history
-- stream `:grants:done`. The special grant `debt` (amount 0, remaining <= 0) carries a charge no
-- grant could pay (a settlement whose hold was already swept); the next effective grant pays it.
-- A hold's allocation is stored with it: "<amount>:<key id>|<grant>=<x>,<grant>=<x>".
-- Every function takes its key names: the lib serves scripts with and without a contract
-- prelude. Amounts are integer micro-credits, exact in a Lua number below 2^53.
local GRANT_PATTERN = '^(%-?%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%a+)|(%d+)|(%-?%d+)|(%a)$'
local GRANTS_DONE_MAXLEN = 1000

local function grant_parse(id, value)
  local r, h, p, e, f, c, t, amt, st = string.match(value or '', GRANT_PATTERN)
  if not r then return nil end
  return {id = id, remaining = tonumber(r), held = tonumber(h), priority = tonumber(p), expires = tonumber(e),
    effective = tonumber(f), category = c, created = tonumber(t), amount = tonumber(amt), state = st}
end

local function grant_format(g)
  return string.format('%d|%d|%d|%d|%d|%s|%d|%d|%s', g.remaining, g.held, g.priority, g.expires, g.effective,
    g.category, g.created, g.amount, g.state)
end

-- Ids are "g<sequence>" (credit_change.lua numbers them), `legacy` and `debt`.
local function grant_seq(id)
  return tonumber(string.match(id, '^g(%d+)$')) or -1
end

-- Spend order: priority, then soonest expiry (none last), then promotional before paid, then
-- oldest (created, then sequence).
local function grant_before(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  local ea = a.expires > 0 and a.expires or math.huge
  local eb = b.expires > 0 and b.expires or math.huge
  if ea ~= eb then return ea < eb end
  if a.category ~= b.category then return a.category == 'promotional' end
  if a.created ~= b.created then return a.created < b.created end
  local sa, sb = grant_seq(a.id), grant_seq(b.id)
  if sa ~= sb then return sa < sb end
  return a.id < b.id
end

-- All live grants: a list (spend order) and a map by id.
local function grants_load(gkey)
  local raw = redis.call('HGETALL', gkey)
  local list, by_id = {}, {}
  for i = 1, #raw, 2 do
    local g = grant_parse(raw[i], raw[i + 1])
    if g then list[#list + 1] = g; by_id[g.id] = g end
  end
  table.sort(list, grant_before)
  return list, by_id
end

local function grant_get(gkey, id)
  return grant_parse(id, redis.call('HGET', gkey, id))
end

-- Write one grant back, or retire it to the history when nothing is left on it (g.gone).
local function grant_store(gkey, done_key, g, now)
  if g.state ~= 'w' and g.held <= 0 and g.remaining == 0 then
    g.gone = true
    redis.call('HDEL', gkey, g.id)
    redis.call('XADD', done_key, 'MAXLEN', '~', GRANTS_DONE_MAXLEN, '*', 'grant', g.id, 'value', grant_format(g),
      'ts_ms', string.format('%d', now))
  else
    redis.call('HSET', gkey, g.id, grant_format(g))
  end
end

-- Credits leave the balance unspent: counted in the account's `expired`.
local function grant_expire_part(akey, g, part)
  if part <= 0 then return end
  g.remaining = g.remaining - part
  redis.call('HINCRBY', akey, 'balance', -part)
  redis.call('HINCRBY', akey, 'expired', part)
end

-- A grant that becomes effective pays the account's debt first (no change to the balance: the
-- debt is already in it).
local function grant_pay_debt(gkey, done_key, by_id, g, now)
  local debt = by_id and by_id['debt'] or grant_get(gkey, 'debt')
  if not debt or debt.remaining >= 0 or g.id == 'debt' or g.remaining <= g.held then return end
  local pay = math.min(-debt.remaining, g.remaining - g.held)
  debt.remaining = debt.remaining + pay
  g.remaining = g.remaining - pay
  grant_store(gkey, done_key, debt, now)
end

-- The grants hash of an account from before grants: one paid grant without expiry holding the
-- balance and what open holds held (their holds carry no allocation: settlement draws them from
-- `legacy`). Returns true when the account has grants (now or already).
local function grants_migrate(gkey, akey, now)
  if redis.call('EXISTS', gkey) == 1 then return true end
  local a = redis.call('HMGET', akey, 'balance', 'held')
  local balance, held = tonumber(a[1]) or 0, tonumber(a[2]) or 0
  if balance == 0 and held == 0 then return false end
  redis.call('HSET', gkey, 'legacy', grant_format({remaining = balance, held = math.max(held, 0), priority = 50,
    expires = 0, effective = 0, category = 'paid', created = 0, amount = balance, state = 'a'}))
  return true
end

-- The sweep at `now`: waiting grants whose time came join the balance; active grants past their
-- expiry become x, their unheld part leaving the balance as expired. `on_expiring(g)`, if
-- given, is called for each active grant that is left (the webhook before expiry).
local function grants_sweep(gkey, done_key, akey, now, on_expiring)
  local list, by_id = grants_load(gkey)
  for _, g in ipairs(list) do
    local changed = false
    if g.state == 'w' and g.effective <= now then
      g.state, changed = 'a', true
      redis.call('HINCRBY', akey, 'balance', g.remaining)
      grant_pay_debt(gkey, done_key, by_id, g, now)
    end
    if g.state == 'a' and g.expires > 0 and g.expires <= now and g.id ~= 'debt' then
      g.state, changed = 'x', true
      grant_expire_part(akey, g, g.remaining - g.held)
    end
    if changed then grant_store(gkey, done_key, g, now) end
    if g.state == 'a' and on_expiring and g.expires > 0 then on_expiring(g) end
  end
  local live = {}
  for _, g in ipairs(list) do
    if not g.gone then live[#live + 1] = g end
  end
  return live
end

-- Allocate `amount` over active grants' available (remaining - held) in spend order: a list of
-- {grant, x}; what nothing covers is left out (the caller checked the funds).
local function grants_allocate(list, amount)
  local out, left = {}, amount
  for _, g in ipairs(list) do
    if left <= 0 then break end
    local avail = g.remaining - g.held
    if g.state == 'a' and avail > 0 then
      local x = math.min(avail, left)
      out[#out + 1] = {g, x}
      left = left - x
    end
  end
  return out, left
end

local function allocation_format(alloc)
  local parts = {}
  for i, p in ipairs(alloc) do parts[i] = p[1].id .. '=' .. string.format('%d', p[2]) end
  return table.concat(parts, ',')
end

-- A hold value's allocation: a list of {grant id, x} (empty for a hold from before grants), and
-- whether it had one.
local function hold_allocation(value)
  local text = value and string.match(value, '|(.*)$')
  local out = {}
  if not text then return out, false end
  for id, x in string.gmatch(text, '([^,=]+)=(%d+)') do out[#out + 1] = {id, tonumber(x)} end
  return out, true
end

-- Draw `left` micro-credits from active grants' available in spend order (a debit, or a charge
-- beyond its hold's allocation); what none covers goes to the debt when `into_debt`. Adds to
-- `paid` (grant id -> micro-credits, and the order in paid.order). Returns what was not drawn.
local function grants_draw_available(gkey, done_key, list, left, now, paid, into_debt)
  for _, g in ipairs(list) do
    if left <= 0 then break end
    local avail = g.remaining - g.held
    if g.state == 'a' and avail > 0 and not g.gone then
      local take = math.min(avail, left)
      g.remaining = g.remaining - take
      left = left - take
      grant_store(gkey, done_key, g, now)
      if paid then
        if not paid[g.id] then paid.order[#paid.order + 1] = g.id; paid[g.id] = 0 end
        paid[g.id] = paid[g.id] + take
      end
    end
  end
  if left > 0 and into_debt then
    local debt = grant_get(gkey, 'debt') or {id = 'debt', remaining = 0, held = 0, priority = 100, expires = 0,
      effective = 0, category = 'paid', created = now, amount = 0, state = 'a'}
    debt.remaining = debt.remaining - left
    grant_store(gkey, done_key, debt, now)
    if paid then
      if not paid['debt'] then paid.order[#paid.order + 1] = 'debt'; paid['debt'] = 0 end
      paid['debt'] = paid['debt'] + left
    end
    left = 0
  end
  return left
end

-- Release a hold's allocation without charging it (an expired hold): each grant's held goes
-- down; on an x grant the released part expires now. A hold from before grants releases its
-- amount from `legacy`.
local function grants_release(gkey, done_key, akey, value, amount, now)
  local alloc, has = hold_allocation(value)
  if not has then
    local legacy = grant_get(gkey, 'legacy')
    if legacy then
      legacy.held = math.max(legacy.held - amount, 0)
      grant_store(gkey, done_key, legacy, now)
    end
    return
  end
  for _, p in ipairs(alloc) do
    local g = grant_get(gkey, p[1])
    if g then
      local x = math.min(p[2], g.held)
      g.held = g.held - x
      if g.state == 'x' then grant_expire_part(akey, g, math.min(x, g.remaining)) end
      grant_store(gkey, done_key, g, now)
    end
  end
end

-- Settle a hold's allocation: per grant in order, take = min(x, charge left) is spent, the
-- hold's x is released (on an x grant the part not taken expires now). Returns the charge left
-- (beyond the allocation). A hold from before grants draws from `legacy`.
local function grants_charge(gkey, done_key, akey, value, amount, charge, now, paid)
  local alloc, has = hold_allocation(value)
  if not has then
    local legacy = grant_get(gkey, 'legacy')
    if not legacy then return charge end
    alloc = {{'legacy', math.min(amount or 0, legacy.held)}}
  end
  local left = charge
  for _, p in ipairs(alloc) do
    local g = grant_get(gkey, p[1])
    if g then
      local x = math.min(p[2], g.held)
      local take = math.min(x, left)
      g.remaining = g.remaining - take
      g.held = g.held - x
      left = left - take
      if g.state == 'x' then grant_expire_part(akey, g, math.min(x - take, g.remaining)) end
      grant_store(gkey, done_key, g, now)
      if take > 0 then
        if not paid[g.id] then paid.order[#paid.order + 1] = g.id; paid[g.id] = 0 end
        paid[g.id] = paid[g.id] + take
      end
    end
  end
  return left
end

local function paid_format(paid)
  local parts = {}
  for i, id in ipairs(paid.order) do parts[i] = id .. ':' .. string.format('%d', paid[id]) end
  return table.concat(parts, ',')
end

-- A new grant (credit_change.lua): effective now (active, in the balance, paying any debt
-- first) or later (waiting). Returns its id.
local function grant_create(gkey, done_key, akey, amount, category, priority, effective, expires, now)
  local id = 'g' .. string.format('%d', redis.call('HINCRBY', akey, 'grant_seq', 1))
  local g = {id = id, remaining = amount, held = 0, priority = priority, expires = expires, effective = effective,
    category = category, created = now, amount = amount, state = 'w'}
  if effective <= now then
    g.state = 'a'
    redis.call('HINCRBY', akey, 'balance', amount)
    grant_pay_debt(gkey, done_key, nil, g, now)
    if expires > 0 and expires <= now then
      g.state = 'x'
      grant_expire_part(akey, g, g.remaining - g.held)
    end
  end
  grant_store(gkey, done_key, g, now)
  return id
end
