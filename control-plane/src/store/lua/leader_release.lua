-- KEYS[1] leader key; ARGV: 1 replica id. Deletes the lock if held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
