-- Reads everything data planes see at one version.
-- Returns {epoch, version, config or nil, instances (flat hash), states
-- (flat hash), lease TTLs (flat hash)}.
redis.call('SET', K_EPOCH, ARGV[1], 'NX')
return {
  redis.call('GET', K_EPOCH),
  current_version(),
  redis.call('GET', K_CONFIG),
  redis.call('HGETALL', K_INSTANCES),
  redis.call('HGETALL', K_STATES),
  redis.call('HGETALL', K_TTLS),
}
