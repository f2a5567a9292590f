-- KEYS[1] data-plane hash; ARGV: 1 node id, 2 session id, 3 record JSON.
-- Writes the final record unless a newer session already owns the node.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and record.session ~= ARGV[2] then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
