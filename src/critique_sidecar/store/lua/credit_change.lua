-- A credit grant or debit under an Idempotency-Key, atomically with its audit entry.
-- The same key again returns the first result and changes nothing; the same key with a
-- different request (fingerprint) is a conflict. A debit never takes the balance below what
-- open holds need (balance - held).
-- KEYS: 1 account hash  2 idempotency record  3 audit stream   (all in the account's slot)
-- ARGV: 1 delta (signed micro-credits)  2 request fingerprint  3 record TTL (s)
--       4 audit entry's static fields (JSON array of field, value, ...)  5 '1' = debit
-- Returns {status, balance_before, balance_after, audit_id, ts_ms}; status is
-- applied | replay | conflict | insufficient (then balance_before = balance, balance_after = held).
local first = redis.call('HMGET', KEYS[2], 'fp', 'before', 'after', 'audit_id', 'ts_ms')
if first[1] then
  if first[1] ~= ARGV[2] then return {'conflict', 0, 0, '', 0} end
  return {'replay', tonumber(first[2]), tonumber(first[3]), first[4], tonumber(first[5])}
end
local delta = tonumber(ARGV[1])
local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
local before = tonumber(acct[1]) or 0
local held = tonumber(acct[2]) or 0
if ARGV[5] == '1' and before + delta < held then
  return {'insufficient', before, held, '', 0}
end
local after = redis.call('HINCRBY', KEYS[1], 'balance', delta)

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
fields[#fields + 1] = cjson.encode({balance = credits(after), delta = credits(delta)})
local audit_id = redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'fp', ARGV[2], 'before', before, 'after', after, 'audit_id', audit_id, 'ts_ms', ts_ms)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {'applied', before, after, audit_id, ts_ms}
