-- KEYS[1] leader key; ARGV: 1 replica id, 2 TTL ms. Extends the lock if held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
