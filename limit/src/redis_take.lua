-- take: checks every bucket of a request and commits all of them only if all admit.
-- Returns {1, delay_us, soft, remaining, reset_us, ...per charge} when admitted, or
-- {0, index (0-based), retry_after_us, never_fits, remaining, reset_us} for the first refusal,
-- packed: one string of little-endian 8-byte integers, each truncated toward zero as Redis
-- truncates a number in an integer reply. As a RESP array the client's parser spent hundreds of
-- instructions on each integer (about 10,000 a request); this is one bulk string to read.
local function packed(t)
  return struct.pack('<' .. string.rep('i8', #t), unpack(t))
end
local now = clock()
local states = {}   -- key -> state after this call's earlier charges (a key may repeat)
local order = {}    -- distinct keys, first occurrence, with their spec
local out = { 1 }
for i = 1, #KEYS do
  local key = KEYS[i]
  local s = spec(i)
  local st = states[key]
  if not st then
    st = load(s, fetch(s, key), now)
    order[#order + 1] = { key, s }
  end
  local cost = s.amount
  local keep = 1000 - s.reserve
  local ok, delay, soft, retry, never = false, 0, 0, 0, 0
  local nst
  if s.kind == 1 and s.p1 <= 0 then
    -- Nothing ever drains: a misconfigured bucket admits nothing.
    never = 1
    nst = st
  elseif s.kind == 1 then
    local t = s.p2 / s.p1
    local allowed = s.p3 * keep / 1000 * t
    local new_tat = st.tat + cost * t
    local over = new_tat - now - allowed
    if over <= EPS_US then
      ok = true
    elseif s.p4 >= 0 and over <= s.p4 + EPS_US then
      ok = true
      delay = math.ceil(over - EPS_US)
    elseif cost * t > allowed + EPS_US then
      never = 1
    else
      retry = math.ceil(over - EPS_US)
    end
    nst = { tat = new_tat }
  elseif s.kind == 2 then
    local usable = st.level - s.p1 * s.reserve / 1000
    if cost <= usable + EPS_UNITS then
      ok = true
    elseif s.p2 <= 0 or cost > s.p1 * keep / 1000 + EPS_UNITS then
      never = 1
    else
      retry = math.ceil((cost - usable) * s.p3 / s.p2 - EPS_US)
    end
    nst = { level = st.level - cost }
  elseif s.kind == 5 then
    -- A prepaid balance: no reserve, and no time to wait for (only a credit helps).
    if st.n + cost <= st.credited then
      ok = true
    end
    nst = { n = st.n + cost, credited = st.credited }
  elseif s.kind == 3 then
    local allowed = math.floor(s.p1 * keep / 1000)
    if s.p2 == 1 then
      -- Soft: always admitted (the reserve does not apply), flagged once over the limit.
      ok = true
      if st.n + cost > s.p1 then
        soft = 1
      end
    elseif st.n + cost <= allowed then
      ok = true
    elseif cost > allowed then
      never = 1
    else
      retry = math.ceil(s.p3 - now)
    end
    nst = { n = st.n + cost }
  else
    local allowed = math.floor(s.p1 * keep / 1000)
    if st.n + cost <= allowed then
      ok = true
    elseif cost > allowed then
      never = 1
    end
    nst = { n = st.n + cost }
  end
  if not ok then
    local rem, reset = status(s, st, now)
    return packed({ 0, i - 1, retry, never, rem, reset })
  end
  states[key] = nst
  local rem, reset = status(s, nst, now)
  out[#out + 1] = delay
  out[#out + 1] = soft
  out[#out + 1] = rem
  out[#out + 1] = reset
end
for _, ks in ipairs(order) do
  store(ks[1], ks[2], states[ks[1]], now)
end
return packed(out)
