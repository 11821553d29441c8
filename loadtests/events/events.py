#!/usr/bin/env python3
"""Issue #15 figures that need the real binary (python3 stdlib only; `run` calls it):

  events.py usage --bin BIN --oha OHA --brokers HOST:PORT --work DIR [--requests N] [--rate R] [--runs K]
  events.py saga  --bin BIN --database-url URL --redis-url URL --work DIR [--purchases N] [--concurrency C]
                  [--runs K] [--brokers HOST:PORT]

usage: the gateway (full chain: request-id + api-key + rate-limit on memory, one worker thread) in front of
the OpenAI stub (latency off), once with `events.kafka` on and once without, both pinned to CPU 0 and the
load generator to CPU 1. Each run sends N requests at a fixed rate (oha -q) to each gateway, the order
alternating between runs; CPU µs/request is the utime+stime delta of the gateway process over the run
(read once every event of the run is acknowledged, so the producer's delivery work counts) divided by N.
Events/s: N / (first request → last acknowledgement, `leaky_usage_events_published_total`). Then one
unthrottled run (oha -c 64) against each gateway: the highest rate the producing one publishes at. Produce
requests per run: the record batches the broker wrote to the topic (its segment files, read directly; one
key, so one partition and one batch per request) against the run's 50 ms drains. Fails on
any non-2xx answer, transport error, spooled or dropped event.

saga: the control plane (release binary) over PostgreSQL, Redis and the payment stub with realistic
latency (each provider call 80–300 ms); the stub's webhooks go to the control plane. Each run creates an
org and N purchases (C at a time, 1,000,000 tokens each); completion time is read from the saga's step
history (last forward step's `at` − the purchase's `created_at`, both the control plane's clock), and the
client's POST → `completed` seen by polling `GET /v1/purchases/{id}` every 10 ms is printed beside it.
Fails if a purchase does not complete within 60 s (the control plane runs no saga worker, or a step failed).
"""
import argparse
import concurrent.futures
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
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import CLK, ROOT, cpu_seconds, die, free_port, spread, start, stop_all, wait_up  # noqa: E402

PAYLOAD = os.path.join(ROOT, "loadtests", "payloads", "chat.json")
KEY = "lt-bench-key"
KEY_SHA = "078f83a6b8e44f6115d89c0f405ca866aba37cbc21507ac6c36206dc039f7fce"


def http(method, url, body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def thread_cpu(pid):
    """utime + stime (seconds) by thread name: where the producer's extra CPU goes."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / CLK
    return out


def metric(admin, name):
    _, body = http("GET", f"http://{admin}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def log_batches(a, topic):
    """Record batches in the broker's log of `topic` (every partition): (batches, records, bytes,
    codecs). Each produce request writes one batch per partition, and the bench's events have one key
    (one partition), so batches = produce requests: read from the segment files' batch headers
    (baseOffset int64, length int32, ..., attributes int16 at byte 21, record count int32 at 57)."""
    data = os.path.join(a.work, "kafka", "data")
    batches = records = size = 0
    codecs = set()
    for d in os.listdir(data):
        if not d.startswith(topic + "-"):
            continue
        for seg in sorted(x for x in os.listdir(os.path.join(data, d)) if x.endswith(".log")):
            with open(os.path.join(data, d, seg), "rb") as f:
                while True:
                    head = f.read(61)
                    if len(head) < 61:
                        break
                    length = int.from_bytes(head[8:12], "big")
                    codecs.add(("none", "gzip", "snappy", "lz4", "zstd")[int.from_bytes(head[21:23], "big") & 7])
                    batches += 1
                    records += int.from_bytes(head[57:61], "big")
                    size += 12 + length
                    f.seek(12 + length - 61, 1)
    return batches, records, size, codecs


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]


# ---------- usage events ----------

def gateway_config(port, admin, stub, brokers, topic, spool):
    events = "" if not brokers else (
        f"events:\n  kafka:\n    brokers: [\"{brokers}\"]\n    topic: {topic}\n    spool_dir: {spool}\n")
    return f"""server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin}
  threads: 1
providers:
  openai:
    base_url: http://127.0.0.1:{stub}
    credential: sk-bench
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
tiers:
  bench:
    limits:
      - {{ name: bench-rpm, unit: requests, rate: 100000000, per: minute }}
      - {{ name: bench-tpd, unit: tokens, quota: daily, limit: 1000000000000 }}
limits:
  store: memory
keys:
  - {{ id: bench, sha256: {KEY_SHA}, user: bench, org: bench-org, tier: bench }}
{events}"""


def oha(a, port, n, conc, rate=None):
    argv = ["taskset", "-c", "1", a.oha, "-n", str(n), "-c", str(conc), "--no-tui", "--output-format", "json",
            "-m", "POST", "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {KEY}",
            "-D", PAYLOAD]
    if rate:
        argv += ["-q", str(rate), "--latency-correction"]
    argv.append(f"http://127.0.0.1:{port}/v1/chat/completions")
    cmd = " ".join(shlex.quote(x) for x in argv)
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"oha failed: {cmd}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    if any(not 200 <= k < 300 for k in codes) or j.get("errorDistribution"):
        die(f"non-2xx or transport errors {codes} {j.get('errorDistribution')} from `{cmd}`")
    lp = j["latencyPercentiles"]
    return {"ok": sum(codes.values()), "rps": j["summary"]["requestsPerSec"],
            "p50": lp["p50"] * 1e3, "p99": lp["p99"] * 1e3, "cmd": cmd}


def measure(a, gw, n, rate, conc=16):
    """CPU µs/request, events/s and latency of n requests to gateway gw."""
    p0 = metric(gw["admin"], "leaky_usage_events_published_total")
    b0 = log_batches(a, gw["topic"]) if gw["on"] else None
    c0, t0, th0 = cpu_seconds(gw["proc"].pid), time.monotonic(), thread_cpu(gw["proc"].pid)
    r = oha(a, gw["port"], n, conc, rate)
    if gw["on"]:
        end = time.monotonic() + 60
        while metric(gw["admin"], "leaky_usage_events_published_total") - p0 < n:
            if time.monotonic() > end:
                die(f"{gw['name']}: not every event acknowledged within 60 s")
            time.sleep(0.01)
    t1 = time.monotonic()
    r["cpu_us"] = (cpu_seconds(gw["proc"].pid) - c0) / n * 1e6
    th1 = thread_cpu(gw["proc"].pid)
    r["threads"] = {k: (v - th0.get(k, 0.0)) / n * 1e6 for k, v in th1.items()}
    r["eps"] = (metric(gw["admin"], "leaky_usage_events_published_total") - p0) / (t1 - t0)
    if gw["on"]:
        b1 = log_batches(a, gw["topic"])
        r["batches"], r["records"], r["bytes"], r["codecs"] = (
            b1[0] - b0[0], b1[1] - b0[1], b1[2] - b0[2], sorted(b1[3]))
        r["drains"] = n / r["rps"] / 0.05  # the requests' span over the drain's 50 ms period
    return r


def start_gateway(a, name, stub, brokers):
    port, admin = free_port(), free_port()
    spool = os.path.join(a.work, f"spool-{name}")
    cfg = os.path.join(a.work, f"gw-{name}.yaml")
    topic = f"leaky.usage.bench-{os.getpid()}"
    with open(cfg, "w") as f:
        f.write(gateway_config(port, admin, stub, brokers, topic, spool))
    p = start([a.bin, "proxy", "--config", cfg], os.path.join(a.work, f"gw-{name}.log"), cpu="0",
              env={"LEAKY_LOG": "warn"})
    wait_up(f"http://127.0.0.1:{admin}/healthz", f"gateway {name}", p)
    return {"name": name, "port": port, "admin": f"127.0.0.1:{admin}", "proc": p, "on": bool(brokers),
            "topic": topic}


def usage(a):
    stub = free_port()
    sp = start([a.bin, "stubs", "--latency", "off", "--openai-listen", f"127.0.0.1:{stub}",
                "--gemini-listen", f"127.0.0.1:{free_port()}", "--qwen-listen", f"127.0.0.1:{free_port()}",
                "--payment-listen", f"127.0.0.1:{free_port()}"], os.path.join(a.work, "stubs-off.log"), cpu="0")
    wait_up(f"http://127.0.0.1:{stub}/healthz", "stub", sp)
    gws = {"off": start_gateway(a, "off", stub, None), "on": start_gateway(a, "on", stub, a.brokers)}
    for gw in gws.values():  # warm-up: connections, the producer's metadata, the topic (auto-created)
        measure(a, gw, 2000, a.rate)
    rows = []
    for run in range(1, a.runs + 1):
        order = ["off", "on"] if run % 2 else ["on", "off"]
        got = {v: measure(a, gws[v], a.requests, a.rate) for v in order}
        rows.append((run, got["off"], got["on"]))
    # Unthrottled: as many runs as the fixed-rate part, order alternating; `sat` is the median run by ratio.
    sats = []
    for run in range(1, a.runs + 1):
        order = ["off", "on"] if run % 2 else ["on", "off"]
        got = {v: measure(a, gws[v], a.requests, None, conc=64) for v in order}
        sats.append((run, got["off"], got["on"]))
    sats.sort(key=lambda r: r[2]["cpu_us"] / r[1]["cpu_us"])
    sat = {"off": sats[len(sats) // 2][1], "on": sats[len(sats) // 2][2], "runs": sats}
    for gw in gws.values():
        bad = {m: metric(gw["admin"], m) for m in
               ("leaky_usage_events_spooled_total", "leaky_usage_events_dropped_total")}
        if any(bad.values()):
            die(f"gateway {gw['name']}: {bad}")
    report_usage(a, rows, sat)


def report_usage(a, rows, sat):
    print(f"Fixed rate: {a.requests} requests at {a.rate}/s per gateway and run, oha -c 16 (`{rows[0][2]['cmd']}`)\n")
    print("| run | CPU µs/req off | CPU µs/req on | on/off | events/s acked (on) | p50 ms off / on | p99 ms off / on |")
    print("|---|---|---|---|---|---|---|")
    for run, off, on in rows:
        print(f"| {run} | {off['cpu_us']:.1f} | {on['cpu_us']:.1f} | {on['cpu_us'] / off['cpu_us']:.3f} | "
              f"{on['eps']:.0f} | {off['p50']:.2f} / {on['p50']:.2f} | {off['p99']:.2f} / {on['p99']:.2f} |")
    ratios = [on["cpu_us"] / off["cpu_us"] for _, off, on in rows]
    print(f"\nMedian (min–max) over {len(rows)} runs: CPU µs/request off {spread([r[1]['cpu_us'] for r in rows], '{:.1f}')}, "
          f"on {spread([r[2]['cpu_us'] for r in rows], '{:.1f}')}, ratio on/off {spread(ratios, '{:.3f}')}; "
          f"events/s acknowledged {spread([r[2]['eps'] for r in rows])}.")
    names = sorted({k for _, off, on in rows for k in (*off["threads"], *on["threads"])})
    print("\nWhere it goes: CPU µs/request by thread, median over the runs (off → on); `proxy` is the request path:\n")
    print("| thread | off | on |\n|---|---|---|")
    for k in names:
        o = statistics.median(r[1]["threads"].get(k, 0.0) for r in rows)
        n = statistics.median(r[2]["threads"].get(k, 0.0) for r in rows)
        if o >= 0.05 or n >= 0.05:
            print(f"| `{k}` | {o:.1f} | {n:.1f} |")
    print("\nProduce requests (record batches the broker wrote for the run; one key, so one partition and one batch per "
          "request), the on gateway:\n")
    print("| run | events | batches | events/batch | batches per 50 ms drain | bytes/event on disk | compression |")
    print("|---|---|---|---|---|---|---|")
    for run, _, on in rows + [("unthrottled", None, sat["on"])]:
        print(f"| {run} | {on['records']} | {on['batches']} | {on['records'] / max(on['batches'], 1):.1f} | "
              f"{on['batches'] / on['drains']:.2f} | {on['bytes'] / max(on['records'], 1):.0f} | {', '.join(on['codecs'])} |")
    print("\nUnthrottled (oha -c 64), every run (sorted by ratio) and the producer's threads:\n")
    print("| run | req/s off / on | CPU µs/req off | CPU µs/req on | on/off | events/s acked | producer threads µs/req (on) |")
    print("|---|---|---|---|---|---|---|")
    for run, off, on in sat["runs"]:
        producer = sum(v - off["threads"].get(k, 0.0) for k, v in on["threads"].items() if k != "proxy")
        print(f"| {run} | {off['rps']:.0f} / {on['rps']:.0f} | {off['cpu_us']:.1f} | {on['cpu_us']:.1f} | "
              f"{on['cpu_us'] / off['cpu_us']:.3f} | {on['eps']:.0f} | {producer:.1f} |")
    off, on = sat["off"], sat["on"]
    print(f"\nUnthrottled, the median run (oha -c 64, {a.requests} requests): off {off['rps']:.0f} req/s, {off['cpu_us']:.1f} CPU "
          f"µs/request, p99 {off['p99']:.2f} ms; on {on['rps']:.0f} req/s, {on['eps']:.0f} events/s acknowledged, "
          f"{on['cpu_us']:.1f} CPU µs/request (on/off {on['cpu_us'] / off['cpu_us']:.3f}), p99 {on['p99']:.2f} ms. "
          "No event spooled or dropped.")


# ---------- sagas ----------

def supports(a, flag):
    p = subprocess.run([a.bin, "control-plane", "--help"], capture_output=True, text=True)
    return flag in p.stdout


def start_control_plane(a):
    pay, cp = free_port(), free_port()
    sp = start([a.bin, "stubs", "--latency", "realistic", "--openai-listen", f"127.0.0.1:{free_port()}",
                "--gemini-listen", f"127.0.0.1:{free_port()}", "--qwen-listen", f"127.0.0.1:{free_port()}",
                "--payment-listen", f"127.0.0.1:{pay}"], os.path.join(a.work, "stubs-realistic.log"))
    wait_up(f"http://127.0.0.1:{pay}/healthz", "payment stub", sp)
    st, body = http("POST", f"http://127.0.0.1:{pay}/v1/webhook_endpoints",
                    {"url": f"http://127.0.0.1:{cp}/v1/webhooks/payments", "enabled_events": ["*"]},
                    {"Authorization": "Bearer sk_test_leaky"})
    if st != 200:
        die(f"webhook endpoint: {st} {body[:300]!r}")
    argv = [a.bin, "control-plane", "--listen", f"127.0.0.1:{cp}", "--database-url", a.database_url,
            "--admin-token", "bench-token"]
    if supports(a, "--redis-url"):
        argv += ["--redis-url", a.redis_url]
    else:
        print("(this binary has no --redis-url: the balance mirror is not wired yet)", file=sys.stderr)
    if a.brokers:
        argv += ["--kafka-brokers", a.brokers]
    env = {"LEAKY_LOG": "warn", "LEAKY_PAYMENTS_URL": f"http://127.0.0.1:{pay}",
           "LEAKY_PAYMENTS_WEBHOOK_SECRET": json.loads(body)["secret"]}
    p = start(argv, os.path.join(a.work, "control-plane.log"), env=env)
    wait_up(f"http://127.0.0.1:{cp}/readyz", "control plane", p, secs=60)
    return f"http://127.0.0.1:{cp}"


def purchase(base, org):
    auth = {"Authorization": "Bearer bench-token"}
    t0 = time.monotonic()
    st, body = http("POST", f"{base}/v1/orgs/{org}/purchases", {"tokens": 1_000_000},
                    {**auth, "Idempotency-Key": str(uuid.uuid4())})
    if st != 202:
        die(f"POST purchase: {st} {body[:300]!r}")
    pid = json.loads(body)["id"]
    while True:
        _, body = http("GET", f"{base}/v1/purchases/{pid}", headers=auth)
        p = json.loads(body)
        if p["status"] != "pending":
            break
        if time.monotonic() - t0 > 60:
            die(f"purchase {pid} still pending after 60 s (is a saga worker running?)")
        time.sleep(0.01)
    seen = time.monotonic() - t0
    if p["status"] != "completed":
        die(f"purchase {pid} ended {p['status']}: {json.dumps(p)[:800]}")
    last = max(s["at"] for s in p["steps"] if s["direction"] == "forward")
    return ts(last) - ts(p["created_at"]), seen, len(p["steps"])


def ts(rfc3339):
    from datetime import datetime
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def saga(a):
    base = start_control_plane(a)
    rows, everything = [], []
    for run in range(1, a.runs + 1):
        st, body = http("POST", f"{base}/v1/orgs", {"name": f"bench-{run}-{uuid.uuid4().hex[:6]}"},
                        {"Authorization": "Bearer bench-token"})
        if st != 201:
            die(f"POST org: {st} {body[:300]!r}")
        org = json.loads(body)["id"]
        with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
            got = list(ex.map(lambda _: purchase(base, org), range(a.purchases)))
        server = [g[0] * 1e3 for g in got]
        client = [g[1] * 1e3 for g in got]
        everything += server
        rows.append((run, server, client, got[0][2]))
    print(f"{a.purchases} purchases per run, {a.concurrency} at a time, payment stub `--latency realistic`\n")
    print("| run | completion p50 ms | p99 ms | max ms | client POST → completed p50 / p99 ms | steps recorded |")
    print("|---|---|---|---|---|---|")
    for run, server, client, steps in rows:
        print(f"| {run} | {pct(server, .5):.0f} | {pct(server, .99):.0f} | {max(server):.0f} | "
              f"{pct(client, .5):.0f} / {pct(client, .99):.0f} | {steps} |")
    print(f"\nMedian (min–max) over runs: p50 {spread([pct(r[1], .5) for r in rows])} ms, "
          f"p99 {spread([pct(r[1], .99) for r in rows])} ms; all {len(everything)} purchases: "
          f"p50 {pct(everything, .5):.0f} ms, p99 {pct(everything, .99):.0f} ms.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["usage", "saga"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--oha")
    ap.add_argument("--brokers")
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--purchases", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        usage(a) if a.what == "usage" else saga(a)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
