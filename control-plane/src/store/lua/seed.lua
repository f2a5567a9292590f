-- ARGV: 3 config JSON, 4 the same as a JSON string, 5 least version to
-- write (the seeding view's), 6 initial state JSON, 7.. quadruples (id,
-- spec JSON, state JSON, lease TTL ms or '0' for a static instance).
-- Writes only into a store holding no config, under a new epoch (ARGV[1]).
-- Returns {'seeded', epoch, version} or {'configured', version}.
if redis.call('EXISTS', K_CONFIG) == 1 then
  return {'configured', current_version()}
end
redis.call('SET', K_EPOCH, ARGV[1])
redis.call('SET', K_CONFIG, ARGV[3])
-- What the log holds was written since the loss, in another epoch.
redis.call('DEL', K_CHANGES)
if tonumber(current_version()) < tonumber(ARGV[5]) then
  redis.call('SET', K_VERSION, ARGV[5])
end
local now = now_ms()
for i = 7, #ARGV, 4 do
  local id, spec, state, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local current = redis.call('HGET', K_INSTANCES, id)
  if not current then
    redis.call('HSET', K_INSTANCES, id, spec)
    redis.call('HSET', K_STATES, id, state)
    if ttl ~= '0' then
      redis.call('ZADD', K_LEASES, now + tonumber(ttl), id)
      redis.call('HSET', K_TTLS, id, ttl)
    end
  else
    -- Registered again since the loss: its spec and lease stand; the drain
    -- flag carries over, and the health verdict when the spec is the same.
    local seen = cjson.decode(state)
    local kept = cjson.decode(redis.call('HGET', K_STATES, id) or ARGV[6])
    if current == spec then
      kept.health = seen.health
    end
    kept.health = kept.health or 'unknown'
    kept.draining = kept.draining == true or seen.draining == true
    redis.call('HSET', K_STATES, id, cjson.encode(kept))
  end
end
-- The first entry of the epoch holds everything: the config and every instance.
local upserts, ttls = {}, {}
local all = redis.call('HGETALL', K_INSTANCES)
for j = 1, #all, 2 do
  local id = all[j]
  table.insert(upserts, instance_json(all[j + 1], redis.call('HGET', K_STATES, id) or ARGV[6]))
  local ttl = redis.call('HGET', K_TTLS, id)
  if ttl then
    table.insert(ttls, id)
    table.insert(ttls, ttl)
  end
end
return {'seeded', ARGV[1], commit(delta_json(ARGV[4], upserts, {}, ttls))}
