-- ARGV: 3 most leases to expire. Removes the instances whose lease is due
-- by the store's clock, in one version. Returns {} or {version, ids...}.
local due = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[3]))
local removed = {}
for _, id in ipairs(due) do
  forget(id)
  if redis.call('HDEL', K_INSTANCES, id) == 1 then
    table.insert(removed, id)
  end
end
if #removed == 0 then
  return {}
end
local v = commit(delta_json(nil, {}, removed))
table.insert(removed, 1, v)
return removed
