-- ARGV: 3 id, 4 service, 5 spec JSON, 6 lease TTL ms, 7 initial state JSON,
-- 8 '1' when the id must be new (a generated one).
-- Returns {'created'|'updated'|'renewed', version}, {'conflict', owning
-- service} or {'exists'}.
local id, service, spec, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local current = redis.call('HGET', K_INSTANCES, id)
if current and ARGV[8] == '1' then
  return {'exists'}
end
if current then
  local owner = cjson.decode(current).service
  if owner ~= service then
    return {'conflict', tostring(owner)}
  end
end
redis.call('ZADD', K_LEASES, now_ms() + ttl, id)
redis.call('HSET', K_TTLS, id, ttl)
if current == spec then
  return {'renewed', current_version()}
end
local state = ARGV[7]
if current then
  -- A changed spec keeps the drain flag; health must be checked again.
  local old = redis.call('HGET', K_STATES, id)
  if old and cjson.decode(old).draining == true then
    state = cjson.encode({health = 'unknown', draining = true})
  end
  redis.call('HDEL', K_HEALTH, id)
end
redis.call('HSET', K_INSTANCES, id, spec)
redis.call('HSET', K_STATES, id, state)
local v = commit(delta_json(nil, {instance_json(spec, state)}, {}, {id, ARGV[6]}))
if current then
  return {'updated', v}
end
return {'created', v}
