-- ./loadtests/bench memory scenario: one chat request per key lt-k-000000 .. lt-k-<BENCH_KEYS-1>, in
-- order, then stop (one wrk thread), so every key has live rate-limit buckets.
local f = assert(io.open(os.getenv("BENCH_PAYLOAD") or "loadtests/payloads/chat.json", "rb"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
local n = tonumber(os.getenv("BENCH_KEYS") or "100000")
local sent, done = 0, 0
request = function()
  local i = sent % n
  sent = sent + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = string.format("Bearer lt-k-%06d", i),
  }, body)
end
response = function(status, headers, body)
  done = done + 1
  if done >= n then wrk.thread:stop() end
end
