-- One rate-limit decision, GCRA (generic cell rate algorithm), atomically.
--
-- KEYS[1]  the bucket: it holds the theoretical arrival time (TAT) in
--          microseconds of Redis time, and expires when it no longer limits
-- ARGV[1]  emission interval in microseconds (window / requests, rounded down)
-- ARGV[2]  window in microseconds (how far the TAT may run ahead of now)
--
-- Returns {allowed (1|0), remaining, reset_us, retry_after_us}: requests
-- still allowed right now, time until the bucket is full again, and (when
-- refused) time until the next request would be allowed. A refused request
-- changes nothing, so hammering does not push the reset further away.
--
-- Redis's clock is the only clock, so data planes' clocks do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local next_tat = tat + interval
if next_tat - now > window then
  return {0, 0, tat - now, next_tat - window - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((window - (next_tat - now)) / interval), next_tat - now, 0}
