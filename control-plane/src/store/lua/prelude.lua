-- Shared by every mutation script. KEYS, always in this order:
-- 1 epoch, 2 version, 3 config, 4 instances, 5 states, 6 leases,
-- 7 health, 8 lease TTLs, 9 change log.
-- ARGV[1]: epoch to create if the store has none; ARGV[2]: change-log cap.
local K_EPOCH, K_VERSION, K_CONFIG, K_INSTANCES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_STATES, K_LEASES, K_HEALTH, K_TTLS, K_CHANGES = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function current_version()
  return tostring(redis.call('GET', K_VERSION) or 0)
end

local function instance_json(spec, state)
  return '{"spec":' .. spec .. ',"state":' .. state .. '}'
end

-- lease_ttls: optional flat list of (id, TTL ms) pairs.
local function delta_json(config_quoted, upserts, removals, lease_ttls)
  local parts = {}
  if config_quoted then
    table.insert(parts, '"config":' .. config_quoted)
  end
  table.insert(parts, '"upserts":[' .. table.concat(upserts, ',') .. ']')
  local quoted = {}
  for i, id in ipairs(removals) do
    quoted[i] = cjson.encode(id)
  end
  table.insert(parts, '"removals":[' .. table.concat(quoted, ',') .. ']')
  if lease_ttls and #lease_ttls > 0 then
    local ttls = {}
    for i = 1, #lease_ttls, 2 do
      table.insert(ttls, cjson.encode(lease_ttls[i]) .. ':' .. lease_ttls[i + 1])
    end
    table.insert(parts, '"lease_ttls_ms":{' .. table.concat(ttls, ',') .. '}')
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Bumps the version and appends the delta as entry VERSION-0.
local function commit(delta)
  redis.call('SET', K_EPOCH, ARGV[1], 'NX')
  local epoch = redis.call('GET', K_EPOCH)
  local v = redis.call('INCR', K_VERSION)
  redis.call('XADD', K_CHANGES, 'MAXLEN', '~', ARGV[2], tostring(v) .. '-0', 'd', delta, 'e', epoch)
  return tostring(v)
end

local function forget(id)
  redis.call('HDEL', K_STATES, id)
  redis.call('HDEL', K_HEALTH, id)
  redis.call('HDEL', K_TTLS, id)
  redis.call('ZREM', K_LEASES, id)
end
