-- Retention trim of one usage stream that never drops a record a consumer group still needs.
-- KEYS: 1 usage stream
-- ARGV: 1 retention (ms)
-- Removes (XTRIM MINID, exact) the entries older than the retention cutoff, but never one at
-- or after, for any consumer group, its oldest pending (delivered, unacknowledged) entry or,
-- when nothing is pending, the first entry after its last-delivered id (not yet delivered).
-- The cutoff is measured on the Redis server clock, the clock stream ids come from.
-- Returns {entries deleted, lowest id kept, the group that held the trim back or ''}
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '0-0', ''} end

local t = redis.call('TIME')
local cutoff_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
if cutoff_ms < 0 then cutoff_ms = 0 end
local min_ms, min_seq, holder = cutoff_ms, 0, ''

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function consider(ms, seq, group)
  if ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq, holder = ms, seq, group
  end
end

for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #info, 2 do g[info[i]] = info[i + 1] end
  if tonumber(g['pending']) > 0 then
    local ms, seq = parse(redis.call('XPENDING', KEYS[1], g['name'])[2])
    consider(ms, seq, g['name'])
  else
    local ms, seq = parse(g['last-delivered-id'])
    consider(ms, seq + 1, g['name'])
  end
end

local minid = string.format('%.0f-%.0f', min_ms, min_seq)
local deleted = redis.call('XTRIM', KEYS[1], 'MINID', minid)
return {deleted, minid, holder}
