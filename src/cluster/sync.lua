local number = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 3, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if current < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('PUBLISH', KEYS[3], 'gen:' .. number .. ':' .. ARGV[i + 1] .. ':' .. ARGV[i])
  end
end
local fence = ARGV[1] == '1'
if ARGV[2] == '' or redis.call('GET', KEYS[4]) ~= ARGV[2] then
  fence = true
  redis.call('SET', KEYS[4], ARGV[2])
end
if fence then
  local era = redis.call('HINCRBY', KEYS[1], 'era', 1)
  redis.call('PUBLISH', KEYS[3], 'gen:' .. number .. ':' .. era .. ':era')
end
return {redis.call('HGETALL', KEYS[1]), number}
