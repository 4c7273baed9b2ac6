-- A grant or debit without an Idempotency-Key or audit entry (RedisAccounts.grant: tests and
-- tools). A grant creates a grant entry; a debit draws from active grants' available in spend
-- order and, beyond it, takes the balance below what holds need (as a bare HINCRBY did): the
-- part no grant covers is debt (lib/grants.lua).
-- KEYS: 1 account hash  2 grants  3 grants history
-- ARGV: 1 delta  2 category  3 effective ms  4 expires ms  5 priority  6 now ms
-- Returns {balance, grant id}.
--#include grants
local delta, now = tonumber(ARGV[1]), tonumber(ARGV[6])
grants_migrate(KEYS[2], KEYS[1], now)
local live = grants_sweep(KEYS[2], KEYS[3], KEYS[1], now, nil)
local grant_id = ''
if delta > 0 then
  grant_id = grant_create(KEYS[2], KEYS[3], KEYS[1], delta, ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[3]),
    tonumber(ARGV[4]), now)
elseif delta < 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', delta)
  grants_draw_available(KEYS[2], KEYS[3], live, -delta, now, nil, true)
end
return {tonumber(redis.call('HGET', KEYS[1], 'balance')) or 0, grant_id}
