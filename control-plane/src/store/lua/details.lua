-- ARGV: 3 instance id, or '' for every instance.
-- Returns {now ms, leases (flat id/score), health records (flat id/JSON)}.
local id = ARGV[3]
if id ~= '' then
  local leases, health = {}, {}
  local expiry = redis.call('ZSCORE', K_LEASES, id)
  if expiry then
    leases = {id, expiry}
  end
  local record = redis.call('HGET', K_HEALTH, id)
  if record then
    health = {id, record}
  end
  return {tostring(now_ms()), leases, health}
end
return {
  tostring(now_ms()),
  redis.call('ZRANGE', K_LEASES, 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', K_HEALTH),
}
