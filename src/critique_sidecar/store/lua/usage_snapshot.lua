-- Dashboard snapshot, read-only and atomic: the rollups, the balance and the settings the
-- dashboard shows all come from one instant, so they can never disagree with each other.
-- KEYS: 1 acct  2 settings  3 month  4 limiter  5 grants  6.. day hashes (oldest first)
-- Returns {{balance, held}, settings field/value list, month field/value list, the spend rates'
-- windows (store/lua/lib/spend_rate.lua) or false, the live grants' field/value list
-- (store/lua/lib/grants.lua), day1 field/value list, ...}
local out = {
  redis.call('HMGET', KEYS[1], 'balance', 'held'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGET', KEYS[4], 'sp'),
  redis.call('HGETALL', KEYS[5]),
}
for i = 6, #KEYS do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end
return out
