-- ARGV: 3 lease id. Returns {'ok', ttl ms} or {'missing'}; a lapsed lease is not revived.
local id = ARGV[3]
local ttl = redis.call('HGET', K_TTLS, id)
local expiry = redis.call('ZSCORE', K_LEASES, id)
local now = now_ms()
if not ttl or not expiry or tonumber(expiry) <= now then
  return {'missing'}
end
redis.call('ZADD', K_LEASES, now + tonumber(ttl), id)
return {'ok', tostring(ttl)}
