-- adjust: settles every bucket (delta > 0 charges more and may overdraw; delta < 0 gives back,
-- never above capacity; concurrency -1 releases a slot). Returns the number of buckets settled.
-- The last key is the call's mark: set on the first run (for 10 s, longer than a settlement's
-- retries take), it makes a retry of a call whose answer was lost settle nothing twice (returns -1).
local buckets = #KEYS - 1
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', 10000) then
  return -1
end
local now = clock()
for i = 1, buckets do
  local key = KEYS[i]
  local s = spec(i)
  local st = load(s, fetch(s, key), now)
  local d = s.amount
  if s.kind == 1 then
    -- Overdraw is remembered (tat moves past the burst); a refund never goes below now.
    if s.p1 > 0 then
      st.tat = math.max(now, st.tat + d * s.p2 / s.p1)
    end
  elseif s.kind == 2 then
    -- The level clamps at empty (debt beyond it is forgotten) and at full.
    st.level = math.max(0, math.min(s.p1, st.level - d))
  else
    -- Windows, concurrency and balances (`debited`) count units.
    st.n = math.max(0, st.n + d)
  end
  store(key, s, st, now)
end
return buckets
