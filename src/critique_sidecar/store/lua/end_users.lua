-- The dashboard's end users over some days, atomically: the top N by credits, or the N with the
-- most credits among those whose id starts with a prefix (the first CAP of them by id).
-- KEYS: 1 scratch (a sorted set of the account's slot, deleted before returning)
--       2.. per day: its end users' sorted set (by credits), then its counts hash
-- ARGV: 1 N  2 prefix ('' for the top N)  3 CAP
-- Returns {more (1: more end users than shown), {end user, credits, requests, in, out}, ...}
-- Cost: one union of the days' sorted sets (C speed, the period's end users) and 4 x N x days
-- hash fields; an account without end users has no such keys and pays almost nothing.
local n, prefix, cap = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local scratch, zsets, hashes = KEYS[1], {}, {}
for i = 2, #KEYS, 2 do
  zsets[#zsets + 1] = KEYS[i]
  hashes[#hashes + 1] = KEYS[i + 1]
end
if #zsets == 0 then return {0} end

local function union(weight)
  local args = {scratch, #zsets}
  for _, z in ipairs(zsets) do args[#args + 1] = z end
  if weight then
    args[#args + 1] = 'WEIGHTS'
    for _ = 1, #zsets do args[#args + 1] = weight end
  end
  redis.call('ZUNIONSTORE', unpack(args))
end

local found, more = {}, 0
if prefix == '' then
  union(nil)
  found = redis.call('ZRANGE', scratch, 0, n - 1, 'REV')
  if redis.call('ZCARD', scratch) > n then more = 1 end
else
  -- Every score 0: the union is ordered by id, and the ids with a prefix are one range of it
  -- (no UTF-8 byte is 0xFF, so prefix .. 0xFF is above every id that starts with the prefix).
  union(0)
  local names = redis.call('ZRANGE', scratch, '[' .. prefix, '(' .. prefix .. '\255', 'BYLEX', 'LIMIT', 0, cap + 1)
  if #names > cap then
    more = 1
    names[#names] = nil
  end
  if #names > 0 then
    union(nil)
    local scores = redis.call('ZMSCORE', scratch, unpack(names))
    local ranked = {}
    for i, name in ipairs(names) do ranked[i] = {name, tonumber(scores[i]) or 0} end
    table.sort(ranked, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    for i = 1, math.min(n, #ranked) do found[i] = ranked[i][1] end
    if #ranked > n then more = 1 end
  end
end
redis.call('DEL', scratch)

local out = {more}
for _, u in ipairs(found) do
  local sums = {0, 0, 0, 0}
  for _, h in ipairs(hashes) do
    local v = redis.call('HMGET', h, 'c:' .. u, 'r:' .. u, 'i:' .. u, 'o:' .. u)
    for i = 1, 4 do sums[i] = sums[i] + (tonumber(v[i]) or 0) end
  end
  -- integers below 2^53 are exact in a Lua number; sent as strings, never as floats
  out[#out + 1] = {u, string.format('%d', sums[1]), string.format('%d', sums[2]),
                   string.format('%d', sums[3]), string.format('%d', sums[4])}
end
return out
