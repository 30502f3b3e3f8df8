local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'owed', 'at')
local owed = tonumber(state[1] or '0')
local at = tonumber(state[2] or now)
if now > at then
  owed = math.max(0, owed - (now - at) / interval)
end
local learned = tonumber(ARGV[2]) - tonumber(ARGV[3])
if learned > owed then
  redis.call('HSET', KEYS[1], 'owed', tostring(learned), 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(learned * interval / 1000) + 1000)
end
if ARGV[4] == '1' then
  local seq = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 3600000)
  return seq
end
return 0
