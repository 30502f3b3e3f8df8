local value = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local number = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], 'gen:' .. number .. ':' .. value .. ':' .. ARGV[1])
return {value, number}
