local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local applied = 0
for _, id in ipairs(live) do
  if tonumber(redis.call('HGET', KEYS[2], id) or '0') >= tonumber(ARGV[1]) then
    applied = applied + 1
  end
end
return {#live, applied}
