-- The spend rates' settled credits (credits per UTC minute and per UTC hour,
-- core/limit_table.py): the limiter's field 'sp' (the account) or 'sp:<key id>' holds
-- "<minute>|<credits>|<hour>|<credits>", minute and hour counted from the epoch. Windows only
-- move forward: a settlement stamped before the stored window (a journaled replay, another
-- sidecar's clock) counts in the stored one, never in a window already gone.
local MINUTE_MS, HOUR_MS = 60000, 3600000

local function read_spend(field)
  local m, mc, h, hc = string.match(redis.call('HGET', K_limiter, field) or '', '^(%d+)|(%d+)|(%d+)|(%d+)$')
  return tonumber(m) or 0, tonumber(mc) or 0, tonumber(h) or 0, tonumber(hc) or 0
end

local function spent_in(field, window, at_ms)
  local m, mc, h, hc = read_spend(field)
  if window == 'minute' then return (m >= math.floor(at_ms / MINUTE_MS)) and mc or 0 end
  return (h >= math.floor(at_ms / HOUR_MS)) and hc or 0
end

local function add_spend(field, credits, at_ms)
  local m, mc, h, hc = read_spend(field)
  local cm, ch = math.floor(at_ms / MINUTE_MS), math.floor(at_ms / HOUR_MS)
  if cm > m then m, mc = cm, 0 end
  if ch > h then h, hc = ch, 0 end
  redis.call('HSET', K_limiter, field, string.format('%d|%d|%d|%d', m, mc + credits, h, hc + credits))
end
