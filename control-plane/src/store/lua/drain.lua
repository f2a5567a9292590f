-- ARGV: 3 id, 4 '1' to drain or '0' to undrain, 5 initial state JSON.
-- Returns {'changed'|'same', version, spec, state} or {'absent'}.
local id, want = ARGV[3], ARGV[4] == '1'
local spec = redis.call('HGET', K_INSTANCES, id)
if not spec then
  return {'absent'}
end
local raw = redis.call('HGET', K_STATES, id) or ARGV[5]
local state = cjson.decode(raw)
if (state.draining == true) == want then
  return {'same', current_version(), spec, raw}
end
state.draining = want
state.health = state.health or 'unknown'
local encoded = cjson.encode(state)
redis.call('HSET', K_STATES, id, encoded)
return {'changed', commit(delta_json(nil, {instance_json(spec, encoded)}, {})), spec, encoded}
