-- ./loadtests/bench multi-tenant load: the chat request of payloads/chat.json, each with a random key
-- of lt-mt-00000 .. lt-mt-<BENCH_KEYS-1> (the runner's generated config holds their hashes).
local f = assert(io.open(os.getenv("BENCH_PAYLOAD") or "loadtests/payloads/chat.json", "rb"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
local n = tonumber(os.getenv("BENCH_KEYS") or "10000")
math.randomseed(42)
request = function()
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = string.format("Bearer lt-mt-%05d", math.random(0, n - 1)),
  }, body)
end
