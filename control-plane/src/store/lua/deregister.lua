-- ARGV: 3 id. Returns {'removed'|'absent', version}.
local id = ARGV[3]
if redis.call('HDEL', K_INSTANCES, id) == 0 then
  return {'absent', current_version()}
end
forget(id)
return {'removed', commit(delta_json(nil, {}, {id}))}
