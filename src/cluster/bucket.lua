local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'owed', 'at')
local owed = tonumber(state[1] or '0')
local at = tonumber(state[2] or now)
if now > at then
  owed = math.max(0, owed - (now - at) / interval)
end
if owed + 1 > size then
  return {0, math.ceil((owed + 1 - size) * interval), 0}
end
owed = owed + 1
redis.call('HSET', KEYS[1], 'owed', tostring(owed), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(owed * interval / 1000) + 1000)
return {1, 0, math.floor(size - owed)}
