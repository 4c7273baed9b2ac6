-- A settings PATCH, atomically: set and delete the given fields, return the whole new hash, and
-- (when an audit entry is given) append it to the account's audit stream with the hash before
-- and after, in the same step.
-- KEYS: 1 settings  2 audit stream (read only when ARGV[1] is not empty)
-- ARGV: 1 audit entry's static fields (JSON array), or '' for no audit entry
--       2 number of field/value pairs to set (n)  3..2n+2 field, value ...  then fields to delete
-- Returns the new hash as HGETALL does.
local function as_object(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  if next(t) == nil then return '{}' end
  return cjson.encode(t)
end
local audited = ARGV[1] ~= ''
local before = audited and as_object(redis.call('HGETALL', KEYS[1])) or nil
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
if audited then
  local entry = cjson.decode(ARGV[1])
  entry[#entry + 1] = 'before'
  entry[#entry + 1] = before
  entry[#entry + 1] = 'after'
  entry[#entry + 1] = as_object(after)
  redis.call('XADD', KEYS[2], '*', unpack(entry))
end
return after
