-- Replace one key's controls atomically: the hash holds exactly the given fields afterwards.
-- KEYS: 1 keyctl   ARGV: field, value, ...
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
