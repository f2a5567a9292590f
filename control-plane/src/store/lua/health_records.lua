-- ARGV: 3.. pairs of (id, record JSON). Skips instances that are gone.
local written = 0
for i = 3, #ARGV, 2 do
  if redis.call('HEXISTS', K_INSTANCES, ARGV[i]) == 1 then
    redis.call('HSET', K_HEALTH, ARGV[i], ARGV[i + 1])
    written = written + 1
  end
end
return written
