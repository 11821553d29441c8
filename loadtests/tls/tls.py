"""Issue #14 figures: what TLS costs on the proxy listener, plain HTTP versus TLS on the same release
binary (python3 stdlib only; process plumbing from loadtests/harness.py).

  tls.py --bin BIN --oha OHA --work DIR --certs DIR [--runs K] [--requests N]

Two proxies with the same config except `server.tls` (certificates from scripts/dev-certs: ECDSA
P-256), each with one worker thread, pinned to CPU 0; the OpenAI stub (latency off) and oha on CPU 1.
Every request is the same non-streaming chat completion. Per run, interleaved plain/TLS:

- handshake cost: a new connection per request (`oha --disable-keepalive -c 16`): req/s, p50/p99 and
  the proxy's CPU per request (/proc utime+stime over the run / requests). TLS 1.3 with X25519 and the
  ECDSA P-256 dev certificate; rustls' server keeps a session cache and sends tickets, so a client that
  resumes (oha may) skips the certificate signature: this is the cost a reconnecting client causes;
- per-request overhead on kept-alive connections: `oha -c 1` for p50/p99 and `oha -c 32` for req/s
  and CPU per request; `tls h2` is the same over one HTTP/2 connection (`--http2 -c 1`, then
  `-c 4 -p 8`).
Prints markdown: median (min–max) over the runs."""
import argparse
import json
import os
import shlex
import subprocess
import sys
import hashlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import cpu_seconds, die, free_port, spread, start, stop_all, wait_port, wait_up  # noqa: E402

KEY = "lt-bench-tls"
BODY = {"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def config(port, admin, stub, certs):
    tls = f"  tls:\n    cert: {certs}/server.pem\n    key: {certs}/server.key\n" if certs else ""
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin}
  threads: 1
{tls}providers:
  openai:
    base_url: {stub}
    credential: sk-bench
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
tiers:
  bench: {{}}
keys:
  - {{ id: bench, sha256: {sha}, user: bench, org: bench-org, tier: bench }}
"""


def start_servers(a):
    stub_port = free_port()
    sp = start([a.bin, "stubs", "--latency", "off", "--openai-listen", f"127.0.0.1:{stub_port}",
                "--gemini-listen", f"127.0.0.1:{free_port()}", "--qwen-listen", f"127.0.0.1:{free_port()}",
                "--payment-listen", f"127.0.0.1:{free_port()}"], os.path.join(a.work, "stubs.log"), cpu="1")
    stub = f"http://127.0.0.1:{stub_port}"
    wait_up(f"{stub}/healthz", "stub", sp)
    out = {}
    for name, certs in (("plain", None), ("tls", a.certs)):
        port, admin = free_port(), free_port()
        cfg = os.path.join(a.work, f"{name}.yaml")
        with open(cfg, "w") as f:
            f.write(config(port, admin, stub, certs))
        gp = start([a.bin, "proxy", "--config", cfg], os.path.join(a.work, f"{name}.log"), cpu="0",
                   env={"LEAKY_LOG": "warn"})
        wait_up(f"http://127.0.0.1:{admin}/healthz", name, gp)
        wait_port(port, name, gp)
        scheme = "https" if certs else "http"
        # `localhost`: the name the dev certificate is for.
        out[name] = {"url": f"{scheme}://localhost:{port}/v1/chat/completions", "pid": gp.pid}
    return out


def oha(a, url, n, extra):
    argv = ["taskset", "-c", "1", a.oha, "-n", str(n), "--no-tui", "--output-format", "json",
            "-m", "POST", "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {KEY}",
            "-d", json.dumps(BODY), "--cacert", f"{a.certs}/ca.pem"] + extra + [url]
    cmd = " ".join(shlex.quote(x) for x in argv)
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"oha failed: {cmd}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    if any(k != 200 for k in codes) or j.get("errorDistribution") or sum(codes.values()) != n:
        die(f"non-200, transport errors or missing answers {codes} {j.get('errorDistribution')} from `{cmd}`")
    lp = j["latencyPercentiles"]
    return {"rps": j["summary"]["requestsPerSec"], "p50": lp["p50"] * 1e6, "p99": lp["p99"] * 1e6, "cmd": cmd}


def measure(a, srv, n, extra):
    c0 = cpu_seconds(srv["pid"])
    r = oha(a, srv["url"], n, extra)
    r["cpu_us"] = (cpu_seconds(srv["pid"]) - c0) / n * 1e6
    return r


# (contender, server, oha flags)
CASES = {
    "new connection per request": [
        ("plain", "plain", ["--disable-keepalive", "-c", "16"]),
        ("tls", "tls", ["--disable-keepalive", "-c", "16"]),
    ],
    "keep-alive, one request at a time": [
        ("plain", "plain", ["-c", "1"]),
        ("tls", "tls", ["-c", "1"]),
        ("tls h2", "tls", ["--http2", "-c", "1", "-p", "1"]),
    ],
    "keep-alive, saturated": [
        ("plain", "plain", ["-c", "32"]),
        ("tls", "tls", ["-c", "32"]),
        ("tls h2", "tls", ["--http2", "-c", "4", "-p", "8"]),
    ],
}


def run(a, servers):
    rows = {(case, name): [] for case, cs in CASES.items() for name, _, _ in cs}
    cmds = {}
    for i in range(a.runs):
        for case, cs in CASES.items():
            # Rotate the order per run so a drift of the shared machine's load hits all alike.
            for name, srv, extra in cs[i % len(cs):] + cs[:i % len(cs)]:
                n = a.requests // 2 if "new connection" in case else a.requests
                r = measure(a, servers[srv], n, extra)
                rows[(case, name)].append(r)
                cmds[(case, name)] = r["cmd"]
    return rows, cmds


def report(a, rows, cmds):
    print(f"Each figure: median (min–max) of {a.runs} runs; {a.requests} requests per keep-alive run, "
          f"{a.requests // 2} per new-connection run.\n")
    for case, cs in CASES.items():
        print(f"## {case}\n")
        print("| contender | req/s | p50 | p99 | proxy CPU / request |")
        print("|---|---|---|---|---|")
        for name, _, _ in cs:
            rs = rows[(case, name)]
            print(f"| {name} | {spread([r['rps'] for r in rs])} | {spread([r['p50'] for r in rs])} µs "
                  f"| {spread([r['p99'] for r in rs])} µs | {spread([r['cpu_us'] for r in rs])} µs |")
        base = rows[(case, "plain")]
        for name, _, _ in cs[1:]:
            rs = rows[(case, name)]
            added = [t["cpu_us"] - p["cpu_us"] for t, p in zip(rs, base)]
            print(f"\n{name} vs plain: {spread(added, '{:+.0f}')} µs of proxy CPU per request.")
        print()
    print("Commands (last run):\n")
    for (case, name), cmd in cmds.items():
        print(f"- {case}, {name}: `{cmd}`")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20000)
    a = ap.parse_args()
    try:
        servers = start_servers(a)
        for srv in servers.values():  # warm: connections to the stub, allocator, code paths
            oha(a, srv["url"], 500, ["-c", "8"])
        rows, cmds = run(a, servers)
    finally:
        stop_all()
    report(a, rows, cmds)


if __name__ == "__main__":
    main()
