-- A settings PATCH, atomically: set and delete the given fields, return the whole new hash.
-- KEYS: 1 settings
-- ARGV: 1 number of field/value pairs to set (n)  2..2n+1 field, value ...  then fields to delete
-- Returns the hash as HGETALL does.
local n = tonumber(ARGV[1])
if n > 0 then
  local pairs_ = {}
  for i = 2, 2 * n + 1 do pairs_[#pairs_ + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(pairs_))
end
if #ARGV > 2 * n + 1 then
  local fields = {}
  for i = 2 * n + 2, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HDEL', KEYS[1], unpack(fields))
end
return redis.call('HGETALL', KEYS[1])
