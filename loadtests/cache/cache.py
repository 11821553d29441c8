#!/usr/bin/env python3
"""Issue #18 figures on the real binary (python3 stdlib only; `run` calls it):

  cache.py --bin BIN --oha OHA --work DIR [--runs K] [--requests N] [--rate R]
           [--throughput-requests M] [--concurrency C]

One gateway (full chain: request-id + api-key + rate-limit on memory, one worker thread, pinned to
CPU 0) in front of the OpenAI stub (latency off), with three routes that differ only in `cache:`:
`/live/v1` (none: every request is proxied), `/memory/v1` (this process's LRU) and `/redis/v1` (a
redis-server of its own). The stub, redis-server and oha share CPU 1.

Per request (fixed rate, oha -q R -c 8 --latency-correction, N requests per run): p50/p99 latency and
CPU µs per request — the utime+stime delta of the gateway process (all threads, /proc/PID/stat) over
the run divided by N; for Redis also redis-server's own CPU per request. Modes: `live` (no cache),
`miss` (cache on, every request unique: lookup, upstream call, capture and store) and `hit` (one
request, stored before the run). The stub's request counter proves what went upstream: a hit run
must add 0, a live or miss run N.

Throughput (unthrottled, oha -c C, M requests per run). Every request has the same body; what varies
is a query parameter (part of the cache key; the stub ignores it), drawn by oha --rand-regex-url: at
0% a fresh random value each time, at 90% one of nine fixed values (stored before) nine times in ten.
The hit ratio printed is the measured one: 1 − (stub requests during the run) / M.

Fails on any non-2xx answer or transport error, or if a mode's upstream count is not what it claims.
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import cpu_seconds, die, free_port, spread, start, stop_all, wait_port, wait_up  # noqa: E402

KEY = "lt-bench-key"
KEY_SHA = "078f83a6b8e44f6115d89c0f405ca866aba37cbc21507ac6c36206dc039f7fce"
# Greedy (`temperature: 0`): the routes cache under the default `temperature: never` policy.
HOT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
       "max_tokens": 16, "temperature": 0}


def post(url, body, headers=None, timeout=10):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def upstream_calls(stub):
    """Chat completions the stub has answered."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in get(f"{stub}/metrics").splitlines()
               if line.startswith("stub_requests_total{") and 'endpoint="/v1/chat/completions"' in line)


# ---------- the servers ----------

def gateway_config(port, admin, stub, redis_url):
    routes = ""
    for name, cache in (("live", ""), ("memory", "memory"), ("redis", "redis")):
        routes += f"""  - name: {name}
    prefix: /{name}/v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}, {{ kind: rate-limit }}]
"""
        if cache:
            routes += f"    cache: {{ store: {cache}, ttl_seconds: 3600, scope: org }}\n"
    return f"""server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin}
  threads: 1
providers:
  openai:
    base_url: {stub}
    credential: sk-bench
    models: [gpt-4o-mini]
routes:
{routes}cache:
  memory: {{ max_bytes: 268435456 }}
  redis: {{ url: "{redis_url}", timeout_ms: 50 }}
tiers:
  bench:
    limits:
      - {{ name: bench-rpm, unit: requests, rate: 100000000, per: minute }}
      - {{ name: bench-tpd, unit: tokens, quota: daily, limit: 1000000000000 }}
limits:
  store: memory
keys:
  - {{ id: bench, sha256: {KEY_SHA}, user: bench, org: bench-org, tier: bench }}
"""


def start_servers(a):
    stub_port, redis_port, port, admin = free_port(), free_port(), free_port(), free_port()
    sp = start([a.bin, "stubs", "--latency", "off", "--openai-listen", f"127.0.0.1:{stub_port}",
                "--gemini-listen", f"127.0.0.1:{free_port()}", "--qwen-listen", f"127.0.0.1:{free_port()}",
                "--payment-listen", f"127.0.0.1:{free_port()}"], os.path.join(a.work, "stubs.log"), cpu="1")
    stub = f"http://127.0.0.1:{stub_port}"
    wait_up(f"{stub}/healthz", "stub", sp)
    rp = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", a.work], os.path.join(a.work, "redis.log"), cpu="1")
    wait_port(redis_port, "redis-server", rp)
    cfg = os.path.join(a.work, "gateway.yaml")
    with open(cfg, "w") as f:
        f.write(gateway_config(port, admin, stub, f"redis://127.0.0.1:{redis_port}"))
    gp = start([a.bin, "proxy", "--config", cfg], os.path.join(a.work, "gateway.log"), cpu="0",
               env={"LEAKY_LOG": "warn"})
    wait_up(f"http://127.0.0.1:{admin}/healthz", "gateway", gp)
    return {"stub": stub, "base": f"http://127.0.0.1:{port}", "gw": gp.pid, "redis": rp.pid}


# ---------- load ----------

# oha varies URLs, not bodies (`-Z` picks lines at random, so "unique" lines repeat): the mix is
# made with a query parameter, which is part of the cache key (the stub ignores it). `--rand-regex-url`
# picks one alternative uniformly: nine fixed values (hot, each stored before the run) and one of
# 36^20 fresh ones: 90% hits. The body is HOT throughout, so every request costs the same to hash.
UNIQUE = r"\?c=u[a-z0-9]{20}"
HOT_QUERIES = [f"h{i}" for i in range(9)]
MIX90 = r"\?c=(" + "|".join(HOT_QUERIES) + r"|u[a-z0-9]{20})"


def oha(a, url, n, conc, rate=None, query=None):
    """n POSTs of HOT to url (+ the `query` regex, oha --rand-regex-url, when given)."""
    argv = ["taskset", "-c", "1", a.oha, "-n", str(n), "-c", str(conc), "--no-tui", "--output-format", "json",
            "-m", "POST", "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {KEY}",
            "-d", json.dumps(HOT)]
    if rate:
        argv += ["-q", str(rate), "--latency-correction"]
    if query:
        # oha treats `.` in a --rand-regex-url as a literal dot (escaping it breaks the URL).
        argv += ["--rand-regex-url", url + query]
    else:
        argv.append(url)
    cmd = " ".join(shlex.quote(x) for x in argv)
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"oha failed: {cmd}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    if any(not 200 <= k < 300 for k in codes) or j.get("errorDistribution") or sum(codes.values()) != n:
        die(f"non-2xx, transport errors or missing answers {codes} {j.get('errorDistribution')} from `{cmd}`")
    lp = j["latencyPercentiles"]
    return {"rps": j["summary"]["requestsPerSec"], "p50": lp["p50"] * 1e3, "p99": lp["p99"] * 1e3, "cmd": cmd}


def measure(a, srv, route, n, conc, rate=None, query=None):
    """One oha run against `route`, with the gateway's (and redis-server's) CPU per request and the
    requests that reached the stub."""
    up0, c0, r0 = upstream_calls(srv["stub"]), cpu_seconds(srv["gw"]), cpu_seconds(srv["redis"])
    r = oha(a, f"{srv['base']}/{route}/v1/chat/completions", n, conc, rate, query)
    r["cpu_us"] = (cpu_seconds(srv["gw"]) - c0) / n * 1e6
    r["redis_us"] = (cpu_seconds(srv["redis"]) - r0) / n * 1e6
    r["upstream"] = upstream_calls(srv["stub"]) - up0
    r["hit_ratio"] = 1 - r["upstream"] / n
    return r


def warm(srv, route, query=""):
    """Stores HOT (at `?c=query`) on a caching route: until an identical request says `hit`
    (answers are written after their last byte, off the request; a cold Redis store connects in
    the background and answers `Unavailable` until then)."""
    url = f"{srv['base']}/{route}/v1/chat/completions" + (f"?c={query}" if query else "")
    end = time.monotonic() + 10
    while True:
        st, h, body = post(url, HOT)
        got = {k.lower(): v for k, v in h.items()}.get("x-leaky-cache")
        if st != 200 or got not in ("miss", "hit"):
            die(f"{route}: {st} x-leaky-cache={got}: {body[:300]!r}")
        if got == "hit":
            return
        if time.monotonic() > end:
            die(f"{route}: HOT never became a hit in 10 s")
        time.sleep(0.02)


# ---------- the figures ----------

MODES = [("live", "live", None), ("memory", "miss", UNIQUE), ("memory", "hit", None),
         ("redis", "miss", UNIQUE), ("redis", "hit", None)]


def per_request(a, srv):
    rows = {m[:2]: [] for m in MODES}
    for run in range(a.runs):
        # Rotate the order between runs, so a drift of the shared machine's load spreads over all modes.
        for route, mode, query in MODES[run % len(MODES):] + MODES[:run % len(MODES)]:
            r = measure(a, srv, route, a.requests, 8, a.rate, query)
            want = {"live": a.requests, "miss": a.requests, "hit": 0}[mode]
            if r["upstream"] != want:
                die(f"{route} {mode}: {r['upstream']:.0f} upstream calls for {a.requests} requests, expected {want}")
            rows[(route, mode)].append(r)
    return rows


def report_per_request(a, rows):
    cmd = rows[("memory", "hit")][0]["cmd"]
    print(f"## Per request: hit vs live, fixed rate\n\n{a.requests} requests at {a.rate}/s per run, {a.runs} runs, "
          f"median (min–max) over runs. Command of a hit run: `{cmd}`\n")
    print("| route | mode | p50 ms | p99 ms | gateway CPU µs/req | redis-server CPU µs/req | upstream calls/run |")
    print("|---|---|---|---|---|---|---|")
    for route, mode, _ in MODES:
        rs = rows[(route, mode)]
        redis = spread([r["redis_us"] for r in rs], "{:.1f}") if route == "redis" else "–"
        print(f"| {route} | {mode} | {spread([r['p50'] for r in rs], '{:.2f}')} | "
              f"{spread([r['p99'] for r in rs], '{:.2f}')} | {spread([r['cpu_us'] for r in rs], '{:.1f}')} | "
              f"{redis} | {rs[0]['upstream']:.0f} |")
    live = statistics.median(r["cpu_us"] for r in rows[("live", "live")])
    for route in ("memory", "redis"):
        hit = statistics.median(r["cpu_us"] for r in rows[(route, "hit")])
        print(f"\n{route} hit: {hit / live:.2f}× the gateway CPU of a live proxied request.", end="")
    print()


def throughput(a, srv):
    cases = [("live", "0%", UNIQUE), ("memory", "0%", UNIQUE), ("memory", "90%", MIX90),
             ("redis", "0%", UNIQUE), ("redis", "90%", MIX90)]
    for route in ("memory", "redis"):
        for q in HOT_QUERIES:
            warm(srv, route, q)
    rows = {c[:2]: [] for c in cases}
    for run in range(a.runs):
        for route, label, query in cases[run % len(cases):] + cases[:run % len(cases)]:
            rows[(route, label)].append(measure(a, srv, route, a.throughput_requests, a.concurrency, None, query))
    return cases, rows


def report_throughput(a, cases, rows):
    print(f"\n## Throughput: 90% hits vs 0%, unthrottled\n\n{a.throughput_requests} requests per run, oha -c "
          f"{a.concurrency} --rand-regex-url (0%: every URL `{UNIQUE}`; 90%: `{MIX90}`, the nine fixed "
          f"values stored before), {a.runs} runs, median (min–max). `live` is the route without a cache.\n")
    print("| route | target hits | measured hit ratio | req/s | p50 ms | p99 ms | gateway CPU µs/req |")
    print("|---|---|---|---|---|---|---|")
    for route, label, _ in cases:
        rs = rows[(route, label)]
        print(f"| {route} | {label} | {spread([r['hit_ratio'] * 100 for r in rs], '{:.1f}')}% | "
              f"{spread([r['rps'] for r in rs])} | {spread([r['p50'] for r in rs], '{:.2f}')} | "
              f"{spread([r['p99'] for r in rs], '{:.2f}')} | {spread([r['cpu_us'] for r in rs], '{:.1f}')} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--throughput-requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        srv = start_servers(a)
        for route in ("memory", "redis"):
            warm(srv, route)
        measure(a, srv, "live", 2000, 8, a.rate)  # warm-up: connections to the stub, allocator
        report_per_request(a, per_request(a, srv))
        report_throughput(a, *throughput(a, srv))
    finally:
        stop_all()


if __name__ == "__main__":
    main()
