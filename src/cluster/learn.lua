local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local learned = now + (tonumber(ARGV[2]) - tonumber(ARGV[3])) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if learned > tat then
  redis.call('SET', KEYS[1], learned, 'PX', math.ceil((learned - now) / 1000) + 1000)
end
return 1
