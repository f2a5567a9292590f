-- ARGV: 3.. pairs of (id, health). Writes the verdicts that change
-- something, in one version. Returns {'changed'|'same', version}.
local upserts = {}
for i = 3, #ARGV, 2 do
  local id, health = ARGV[i], ARGV[i + 1]
  local spec = redis.call('HGET', K_INSTANCES, id)
  if spec then
    local raw = redis.call('HGET', K_STATES, id)
    local state = raw and cjson.decode(raw) or {draining = false}
    if state.health ~= health then
      state.health = health
      state.draining = state.draining == true
      local encoded = cjson.encode(state)
      redis.call('HSET', K_STATES, id, encoded)
      table.insert(upserts, instance_json(spec, encoded))
    end
  end
end
if #upserts == 0 then
  return {'same', current_version()}
end
return {'changed', commit(delta_json(nil, upserts, {}))}
