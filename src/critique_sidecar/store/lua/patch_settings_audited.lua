-- patch_settings.lua plus its audit entry, atomically: the hash before, the change, the hash
-- after, and one entry in the account's audit stream with both.
-- KEYS: 1 settings  2 audit stream
-- ARGV: 1 audit entry's static fields (JSON array)  2 number of field/value pairs to set (n)
--       3..2n+2 field, value ...  then fields to delete
-- Returns the new hash as HGETALL does.
local function as_object(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  if next(t) == nil then return '{}' end
  return cjson.encode(t)
end
local before = as_object(redis.call('HGETALL', KEYS[1]))
local n = tonumber(ARGV[2])
if n > 0 then
  local pairs_ = {}
  for i = 3, 2 * n + 2 do pairs_[#pairs_ + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(pairs_))
end
if #ARGV > 2 * n + 2 then
  local fields = {}
  for i = 2 * n + 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HDEL', KEYS[1], unpack(fields))
end
local after = redis.call('HGETALL', KEYS[1])
local entry = cjson.decode(ARGV[1])
entry[#entry + 1] = 'before'
entry[#entry + 1] = before
entry[#entry + 1] = 'after'
entry[#entry + 1] = as_object(after)
redis.call('XADD', KEYS[2], '*', unpack(entry))
return after
