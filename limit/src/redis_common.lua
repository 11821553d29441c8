-- Shared by redis_take.lua and redis_adjust.lua (concatenated in front of each by redis.rs).
-- Mirrors algo.rs in floating point microseconds (doubles: µs since the epoch fit in 2^53).
-- Every bucket is one string key:
--   leaky        "tat"            theoretical arrival time, µs (absent = idle)
--   token        "level at"       tokens, and the µs they were counted at (absent = full)
--   window       "used"           units used in this window (the key names the window's start)
--   concurrency  "inflight"       requests in flight
-- except a prepaid balance (kind 5): a hash {credited, credited_version, debited} with no TTL, whose
-- key (leaky:bal:{org}) the caller passes as is; the scripts write only `debited`.
-- ARGV[1]: the caller's now in µs, or -1 to use the server's TIME. ARGV[2]: FIELDS numbers per
-- bucket, packed as little-endian doubles (struct.pack '<d'), bucket after bucket:
--   kind (1 leaky, 2 token, 3 window, 4 concurrency, 5 balance), p1, p2, p3, p4, amount,
--   reserve_permille (a balance uses no p* and no reserve)
--   leaky:  p1 rate, p2 period_us, p3 burst, p4 shape_max_wait_us (-1: no shaping)
--   token:  p1 capacity, p2 rate, p3 period_us
--   window: p1 limit, p2 soft (0/1), p3 window end µs
--   conc:   p1 limit
--   amount: the cost (take) or the delta (adjust)
local FIELDS = 7
local EPS_US = 0.001      -- tolerance on times (µs) for float rounding
local EPS_UNITS = 1e-9    -- tolerance on token levels
local MARGIN_MS = 1000    -- TTL margin past idleness
local CONC_TTL_MS = 600000
local WINDOW_MARGIN_MS = 60000

local function clock()
  local now = tonumber(ARGV[1])
  if now < 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end

local SPEC = '<' .. string.rep('d', FIELDS)

local function spec(i)
  local kind, p1, p2, p3, p4, amount, reserve = struct.unpack(SPEC, ARGV[2], 1 + (i - 1) * FIELDS * 8)
  return { kind = kind, p1 = p1, p2 = p2, p3 = p3, p4 = p4, amount = amount, reserve = reserve }
end

-- The bucket's raw value: a string (false when absent), or a balance's {credited, debited}.
local function fetch(s, key)
  if s.kind == 5 then
    return redis.call('HMGET', key, 'credited', 'debited')
  end
  return redis.call('GET', key)
end

-- Current state of a bucket, as a table, from `fetch`'s raw value.
local function load(s, raw, now)
  if s.kind == 5 then
    return { credited = tonumber(raw[1]) or 0, n = tonumber(raw[2]) or 0 }
  elseif s.kind == 1 then
    local tat = raw and tonumber(raw) or now
    return { tat = math.max(tat, now) }
  elseif s.kind == 2 then
    local level, at = s.p1, now
    if raw then
      local l, a = string.match(raw, '^(%S+) (%S+)$')
      if l then
        level, at = tonumber(l), tonumber(a)
      end
    end
    if now > at and s.p3 > 0 then
      level = math.min(s.p1, level + (now - at) * s.p2 / s.p3)
    end
    return { level = level }
  else
    return { n = raw and tonumber(raw) or 0 }
  end
end

-- Writes a bucket back, with a TTL until it is idle again (or deletes it when idle now).
local function store(key, s, st, now)
  if s.kind == 5 then
    redis.call('HSET', key, 'debited', string.format('%d', st.n))
  elseif s.kind == 1 then
    local backlog = st.tat - now
    if backlog <= EPS_US then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.17g', st.tat), 'PX', math.ceil(backlog / 1000) + MARGIN_MS)
    end
  elseif s.kind == 2 then
    local missing = s.p1 - st.level
    if missing <= EPS_UNITS then
      redis.call('DEL', key)
    elseif s.p2 <= 0 then
      -- Never refills: keep it.
      redis.call('SET', key, string.format('%.17g %.17g', st.level, now))
    else
      local until_full_us = missing * s.p3 / s.p2
      redis.call('SET', key, string.format('%.17g %.17g', st.level, now), 'PX',
        math.ceil(until_full_us / 1000) + MARGIN_MS)
    end
  elseif s.kind == 3 then
    local ttl = math.max(1, math.ceil((s.p3 - now) / 1000) + WINDOW_MARGIN_MS)
    redis.call('SET', key, string.format('%d', st.n), 'PX', ttl)
  else
    if st.n <= 0 then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%d', st.n), 'PX', CONC_TTL_MS)
    end
  end
end

-- Whole units left (limit, remaining, reset_us) as of `now`.
local function status(s, st, now)
  if s.kind == 1 then
    if s.p1 <= 0 then
      return 0, 0
    end
    local backlog = st.tat - now
    if s.p2 <= 0 then
      return s.p3, 0
    end
    local t = s.p2 / s.p1
    local rem = math.floor((s.p3 * t - backlog) / t + EPS_US / t)
    return math.max(0, math.min(s.p3, rem)), math.max(0, math.ceil(backlog - EPS_US))
  elseif s.kind == 2 then
    local rem = math.floor(st.level + EPS_UNITS)
    if s.p2 <= 0 then
      return math.max(0, math.min(s.p1, rem)), 0
    end
    local reset = (s.p1 - st.level) * s.p3 / s.p2
    return math.max(0, math.min(s.p1, rem)), math.max(0, math.ceil(reset - EPS_US))
  elseif s.kind == 3 then
    return math.max(0, s.p1 - st.n), math.max(0, math.ceil(s.p3 - now))
  elseif s.kind == 5 then
    return math.max(0, st.credited - st.n), 0
  else
    return math.max(0, s.p1 - st.n), 0
  end
end
