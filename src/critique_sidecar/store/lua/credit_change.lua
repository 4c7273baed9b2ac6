-- A credit grant or debit under an Idempotency-Key, atomically with its audit entry.
-- The same key again returns the first result and changes nothing; the same key with a
-- different request (fingerprint) is a conflict. A grant creates a grant entry (lib/grants.lua:
-- active and in the balance when effective now, else waiting); a debit draws from active
-- grants' available (remaining - held) in spend order and never takes the balance below what
-- open holds need (balance - held).
-- KEYS: 1 account hash  2 idempotency record  3 audit stream  4 grants  5 grants history
--       (all in the account's slot)
-- ARGV: 1 delta (signed micro-credits)  2 request fingerprint  3 record TTL (s)
--       4 audit entry's static fields (JSON array of field, value, ...)  5 '1' = debit
--       6 category (paid | promotional)  7 effective ms (0: now)  8 expires ms (0: never)
--       9 priority (0-100)  10 now ms
-- Returns {status, balance_before, balance_after, audit_id, ts_ms, grant_id}; status is
-- applied | replay | conflict | insufficient (then balance_before = balance, balance_after = held).
--#include grants
local first = redis.call('HMGET', KEYS[2], 'fp', 'before', 'after', 'audit_id', 'ts_ms', 'grant_id')
if first[1] then
  if first[1] ~= ARGV[2] then return {'conflict', 0, 0, '', 0, ''} end
  return {'replay', tonumber(first[2]), tonumber(first[3]), first[4], tonumber(first[5]), first[6] or ''}
end
local delta, now = tonumber(ARGV[1]), tonumber(ARGV[10])
grants_migrate(KEYS[4], KEYS[1], now)
local live = grants_sweep(KEYS[4], KEYS[5], KEYS[1], now, nil)
local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
local before = tonumber(acct[1]) or 0
local held = tonumber(acct[2]) or 0
if ARGV[5] == '1' and before + delta < held then
  return {'insufficient', before, held, '', 0, ''}
end
local grant_id = ''
if delta > 0 then
  grant_id = grant_create(KEYS[4], KEYS[5], KEYS[1], delta, ARGV[6], tonumber(ARGV[9]), tonumber(ARGV[7]),
    tonumber(ARGV[8]), now)
elseif delta < 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', delta)
  grants_draw_available(KEYS[4], KEYS[5], live, -delta, now, nil, true)
end
local after = tonumber(redis.call('HGET', KEYS[1], 'balance')) or 0

local function credits(m)
  local sign = ''
  if m < 0 then sign = '-'; m = -m end
  return sign .. string.format('%d.%06d', math.floor(m / 1000000), m % 1000000)
end
local fields = cjson.decode(ARGV[4])
local ts_ms = 0
for i = 1, #fields, 2 do
  if fields[i] == 'ts_ms' then ts_ms = tonumber(fields[i + 1]) end
end
fields[#fields + 1] = 'before'
fields[#fields + 1] = cjson.encode({balance = credits(before)})
fields[#fields + 1] = 'after'
fields[#fields + 1] = cjson.encode({balance = credits(after), delta = credits(after - before), grant = grant_id})
local audit_id = redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'fp', ARGV[2], 'before', before, 'after', after, 'audit_id', audit_id, 'ts_ms', ts_ms,
  'grant_id', grant_id)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {'applied', before, after, audit_id, ts_ms, grant_id}
