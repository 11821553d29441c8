-- chat.lua with a completion cap the answer does not use up (max_tokens 64; the stub answers in 35
-- tokens): the rate limiter reserves 14 + 64 tokens and settles -29 on every token bucket afterwards.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer lt-bench-key"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}'
