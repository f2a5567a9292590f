-- ARGV: 3 '1' when the change was computed from a stored config, '0' when
-- from none; 4 that config's JSON; 5 new config JSON; 6 the same as a JSON
-- string; 7 initial state JSON; 8 number N of static instances; 9.. N pairs
-- (id, spec JSON), then the ids of static instances that vanish.
-- Returns {'applied'|'unchanged', version} or {'conflict'} when the config
-- changed since it was read.
local current = redis.call('GET', K_CONFIG)
if (current and ARGV[3] ~= '1') or (not current and ARGV[3] ~= '0') or (current and current ~= ARGV[4]) then
  return {'conflict'}
end
if current == ARGV[5] then
  return {'unchanged', current_version()}
end
redis.call('SET', K_CONFIG, ARGV[5])
local upserts, removals = {}, {}
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local id, spec = ARGV[i], ARGV[i + 1]
  i = i + 2
  if redis.call('HGET', K_INSTANCES, id) ~= spec then
    redis.call('HSET', K_INSTANCES, id, spec)
    local state = redis.call('HGET', K_STATES, id)
    if not state then
      state = ARGV[7]
      redis.call('HSET', K_STATES, id, state)
    end
    table.insert(upserts, instance_json(spec, state))
  end
end
for j = i, #ARGV do
  local id = ARGV[j]
  if redis.call('HDEL', K_INSTANCES, id) == 1 then
    forget(id)
    table.insert(removals, id)
  end
end
return {'applied', commit(delta_json(ARGV[6], upserts, removals))}
