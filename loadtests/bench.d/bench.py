"""Driver of ./loadtests/bench (the shell wrapper installs tools and builds; this runs and reports).

Starts every contender on CPU 0, drives load from CPU 1, writes loadtests/results/bench.md and
loadtests/results/bench-*.png. Fails loudly (non-zero exit) on any non-2xx answer where none is
expected, and stops every process it started on exit.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LT = os.path.join(ROOT, "loadtests")
PAYLOAD = os.path.join(LT, "payloads", "chat.json")
STREAM_PAYLOAD = os.path.join(LT, "payloads", "chat-stream.json")
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_KEY = "lt-bench-key"
LITELLM_KEY = "sk-litellm-bench"

# Ports (all loopback). The stub on 19101-19104, the realistic-latency stub on 19111-19114 (each stub
# process serves OpenAI, Gemini, Qwen and the payment provider, so each needs its own four ports).
P_STUB, P_STUB_RT = 19101, 19111
P = {"direct": 19101, "nginx": 19280, "leaky-none": 19180, "leaky-full-memory": 19181,
     "leaky-full-redis": 19182, "litellm": 19400}
P_STREAM, P_MT, P_MT_REDIS, P_100K = 19183, 19184, 19185, 19186
P_STREAM_NGINX = 19281
# The scaling section's four servers on 19291-19294 (admin 19297-19298 for the two gateways).
P_SCALE, P_SCALE_ADMIN, P_SCALE_STUB = 19291, 19295, 19121
LABEL = {"direct": "direct (stub)", "nginx": "nginx (keep-alive proxy)", "leaky-none": "Leaky Tokens, no filters",
         "leaky-full-memory": "Leaky Tokens, full chain, memory", "leaky-full-redis": "Leaky Tokens, full chain, redis",
         "litellm": "LiteLLM proxy (2 workers)"}
CONTENDERS = list(P)
LEAKY = ["leaky-none", "leaky-full-memory", "leaky-full-redis"]
FULL_MEMORY = "leaky-full-memory"

PROCS = []  # (name, Popen)
LOG_DIR = None
COMMANDS = []  # exact command lines, for the report


def log(*a):
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, flush=True)


def die(msg):
    log("FAILED:", msg)
    sys.exit(1)


def cleanup():
    for name, p in reversed(PROCS):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 5
    for name, p in PROCS:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    PROCS.clear()


atexit.register(cleanup)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda s, f: sys.exit(128 + s))


def start(name, argv, cpu="0", env=None):
    """Start a server pinned to `cpu` in its own process group (so its workers go with it)."""
    full = ["taskset", "-c", cpu] + argv
    COMMANDS.append((name, " ".join(shlex.quote(a) for a in full)))
    logf = open(os.path.join(LOG_DIR, f"{name}.log"), "w")
    p = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                         cwd=ROOT)
    PROCS.append((name, p))
    return p


def stop(p):
    for i, (n, q) in enumerate(PROCS):
        if q is p:
            PROCS.pop(i)
            break
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_port(port, p=None, timeout=60, name=""):
    t = time.time()
    while time.time() - t < timeout:
        if p is not None and p.poll() is not None:
            die(f"{name} exited with {p.returncode} before listening on {port}; log: {LOG_DIR}/{name}.log\n"
                + tail(f"{LOG_DIR}/{name}.log"))
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    die(f"{name}: port {port} never opened; log: {LOG_DIR}/{name}.log\n" + tail(f"{LOG_DIR}/{name}.log"))


def tail(path, n=30):
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return ""


def sh(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    out = (p.stdout or p.stderr).strip().splitlines()
    return out[0] if out else "?"


# ---------- /proc: process tree CPU and RSS ----------

def tree(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        x = todo.pop()
        out.append(x)
        todo.extend(kids.get(x, []))
    return out


def cpu_seconds(pid):
    total = 0
    for x in tree(pid):
        try:
            f = open(f"/proc/{x}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)
        except (OSError, IndexError):
            pass
    return total / CLK


def rss_mib(pid):
    total = 0
    for x in tree(pid):
        try:
            total += int(open(f"/proc/{x}/statm").read().split()[1]) * PAGE
        except (OSError, IndexError):
            pass
    return total / 2**20


class RssSampler:
    def __init__(self, pid, every=0.05):
        self.pid, self.every, self.peak, self.stop_ = pid, every, 0.0, False
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_:
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(self.every)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ = True
        self.t.join()
        self.peak = max(self.peak, rss_mib(self.pid))


# ---------- load generators ----------

def headers_for(name):
    key = LITELLM_KEY if name == "litellm" else BENCH_KEY
    return ["-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {key}"]


def url_for(name):
    return f"http://127.0.0.1:{P[name]}/v1/chat/completions"


def oha(name, duration, conc, rate=None, allow_transport_errors=False, tag="", cpu="1", url=None):
    argv = ["taskset", "-c", cpu, OHA, "-z", duration, "-c", str(conc), "--no-tui", "--output-format", "json",
            "-w", "-m", "POST", *headers_for(name), "-D", PAYLOAD]
    if rate:
        argv += ["-q", str(rate), "--latency-correction"]
    argv.append(url or url_for(name))
    cmdline = " ".join(shlex.quote(a) for a in argv)
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        die(f"oha failed ({name} {tag}): {cmdline}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    non2xx = {k: v for k, v in codes.items() if not 200 <= k < 300}
    if non2xx:
        die(f"{name} {tag}: non-2xx responses {non2xx} from `{cmdline}`")
    errors = j.get("errorDistribution") or {}
    ok = sum(codes.values())
    if errors and not allow_transport_errors:
        die(f"{name} {tag}: transport errors {errors} from `{cmdline}`")
    if ok == 0:
        die(f"{name} {tag}: no successful responses from `{cmdline}` (errors: {errors})")
    lp = j["latencyPercentiles"]
    s = j["summary"]
    ms = lambda v: (v or 0) * 1e3  # oha reports seconds
    return {"ok": ok, "errors": sum(errors.values()), "error_kinds": errors, "rps": s["requestsPerSec"],
            "total_s": s["total"], "p50": ms(lp["p50"]), "p90": ms(lp["p90"]), "p99": ms(lp["p99"]),
            "p999": ms(lp.get("p99.9")), "max": ms(s["slowest"]), "cmd": cmdline}


def wrk(url, duration, conc, script, env, key=None):
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conc}", f"-d{duration}", "--latency", "-s", script, url]
    cmdline = " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(shlex.quote(a) for a in argv)
    p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    t = p.stdout
    if p.returncode != 0 or "Non-2xx" in t or "Socket errors" in t:
        die(f"wrk: non-2xx or socket errors from `{cmdline}`\n{t}\n{p.stderr}")

    def us(s):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
            "n": int(re.search(r"(\d+) requests in", t).group(1)), "p50": us(pct["50"]), "p99": us(pct["99"]),
            "cmd": cmdline}


def curl_check(name, url, key, want_headers=()):
    argv = ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-H", "Content-Type: application/json",
            "-H", f"Authorization: Bearer {key}", "--data-binary", f"@{PAYLOAD}", url]
    p = subprocess.run(argv, capture_output=True, text=True)
    status = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "none"
    if status != "200":
        die(f"{name}: status {status} from {url}\n{p.stdout}{p.stderr}")
    for h in want_headers:
        if not re.search(h, p.stdout, re.I | re.M):
            die(f"{name}: response lacks header /{h}/\n{p.stdout}")


# ---------- configs ----------

def sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


def leaky_yaml(listen, admin, stub=P_STUB, store="memory", redis_port=None, filters=True, extra_keys="",
               extra_tiers="", threads=1):
    y = open(os.path.join(HERE, "full-memory.yaml")).read()

    def sub(t, old, new):
        if t.count(old) != 1:
            die(f"full-memory.yaml: expected exactly one `{old}`")
        return t.replace(old, new)
    y = sub(y, "listen: 127.0.0.1:19181", f"listen: 127.0.0.1:{listen}")
    y = sub(y, "admin_listen: 127.0.0.1:19191", f"admin_listen: 127.0.0.1:{admin}")
    y = sub(y, "base_url: http://127.0.0.1:19101", f"base_url: http://127.0.0.1:{stub}")
    if not filters:
        y = re.sub(r"    filters:\n(      - .*\n)+", "    filters: []\n", y)
    if store == "redis":
        y = sub(y, "  store: memory\n", f"  store: redis\n  redis: {{ url: \"redis://127.0.0.1:{redis_port}\", timeout_ms: 20 }}\n")
    if extra_tiers:
        y = sub(y, "\ntiers:\n", "\ntiers:\n" + extra_tiers)
    if threads != 1:
        y = sub(y, "  threads: 1\n", f"  threads: {threads}\n")
    return y + extra_keys


# Multi-tenant keys: lt-mt-00000 ... (tiers mt-basic / mt-pro / mt-ent by index), plus the accuracy keys
# lt-tight-r-000 ... (tier tight-r: 60 requests/min) and lt-tight-t-000 ... (tier tight-t: 1,500 tokens/min).
MT_TIERS = """  mt-basic:
    limits:
      - { name: basic-rpm, unit: requests, rate: 6000, per: minute }
      - { name: basic-tpm, unit: tokens, rate: 1000000, per: minute }
  mt-pro:
    limits:
      - { name: pro-rpm, unit: requests, rate: 60000, per: minute }
      - { name: pro-tpm, unit: tokens, rate: 10000000, per: minute }
      - { name: pro-tpd, unit: tokens, quota: daily, limit: 1000000000 }
  mt-ent:
    limits:
      - { name: ent-rpm, unit: requests, rate: 600000, per: minute }
      - { name: ent-tpm, unit: tokens, rate: 100000000, per: minute }
  tight-r:
    limits:
      - { name: tight-rpm, unit: requests, rate: 60, per: minute }
  tight-t:
    limits:
      - { name: tight-tpm, unit: tokens, rate: 1500, per: minute }
"""
TIGHT_R = (60, 1)       # requests per minute (burst = rate), 1 per request
TIGHT_T = (1500, 30)    # tokens per minute; each request costs 14 prompt + 16 completion tokens


def mt_tier(i):
    return "mt-basic" if i % 10 < 7 else ("mt-pro" if i % 10 < 9 else "mt-ent")


def mt_keys(n, tight):
    lines = []
    for i in range(n):
        k = f"lt-mt-{i:05d}"
        lines.append(f"  - {{ id: mt-{i:05d}, sha256: {sha(k)}, user: mt-user-{i:05d}, tier: {mt_tier(i)} }}\n")
    for kind in ("r", "t"):
        for i in range(tight):
            k = f"lt-tight-{kind}-{i:03d}"
            lines.append(f"  - {{ id: tight-{kind}-{i:03d}, sha256: {sha(k)}, user: tight-{kind}-{i:03d}, tier: tight-{kind} }}\n")
    return "".join(lines)


def many_keys(n):
    return "".join(f"  - {{ id: k-{i:06d}, sha256: {sha(f'lt-k-{i:06d}')}, user: u-{i:06d}, tier: bench }}\n"
                   for i in range(n))


def litellm_yaml(rpm, tpm):
    return f"""# LiteLLM proxy: the same OpenAI stub as an openai-compatible deployment. Rate limiting: model-level
# rpm/tpm on the deployment, enforced by the router's usage-based routing (no database here, so no
# virtual keys with per-key limits).
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{P_STUB}/v1
      api_key: sk-bench
      rpm: {rpm}
      tpm: {tpm}
router_settings:
  routing_strategy: usage-based-routing-v2
  enable_pre_call_checks: true
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
  json_logs: false
general_settings:
  master_key: {LITELLM_KEY}
  disable_spend_logs: true
  disable_error_logs: true
"""


NGINX = """worker_processes {workers};
error_log {work}/{name}-error.log warn;
pid {work}/{name}.pid;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream stub {{ server 127.0.0.1:{stub}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port}{listen_opts};
    location / {{ proxy_pass http://stub; proxy_http_version 1.1; proxy_set_header Connection "";{proxy_opts} }}
  }}
}}
"""


def nginx_conf(work, name, stub, port, workers=1, stream=False):
    """nginx as a keep-alive reverse proxy of `stub` (its pid and error log named `name`). `stream`: set
    up for 1,000 SSE streams opened at once: unbuffered (`proxy_buffering off`, how nginx is set up
    for SSE) and with a listen backlog that takes them all (its default, 511, drops SYNs that come
    back a second later)."""
    return NGINX.format(work=work, name=name, stub=stub, port=port, workers=workers,
                        listen_opts=" backlog=4096" if stream else "",
                        proxy_opts=" proxy_buffering off;" if stream else "")


# ---------- scenarios ----------

def stream_rounds(gw, ports, streams, rounds):
    """`streams` concurrent streams through each path in `ports`, the paths interleaved in each round.
    A path's figures are those of its median round by inter-event p99 (one 1.5-second burst is at the
    mercy of the VM's scheduler); the gateway's RSS peak is the highest seen while it relayed."""
    st = {"rss_idle": rss_mib(gw.pid), "rounds": rounds}
    runs = {label: [] for label in ports}
    for i in range(rounds):
        for label, port in ports.items():
            out = f"{LOG_DIR}/sse-{label}-{i}.json"
            argv = ["taskset", "-c", "1", sys.executable, os.path.join(HERE, "clients.py"), "sse",
                    f"http://127.0.0.1:{port}/v1/chat/completions", STREAM_PAYLOAD, BENCH_KEY, str(streams), out]
            if i == 0:
                COMMANDS.append((f"sse-{label}", " ".join(shlex.quote(x) for x in argv)))
            log(f"streaming: {streams} concurrent streams, {label}, round {i + 1}/{rounds}")
            with RssSampler(gw.pid) as s:
                subprocess.run(argv, check=True, cwd=ROOT)
            r = json.load(open(out))
            if r["failed"]:
                die(f"streaming {label}: {r['failed']} of {r['streams']} streams failed: {r['failures']}")
            r["rss_peak"] = s.peak
            runs[label].append(r)
    for label, rs in runs.items():
        ranked = sorted(rs, key=lambda r: r["gap_p99_ms"])
        st[label] = dict(ranked[len(ranked) // 2], rss_peak=max(r["rss_peak"] for r in rs),
                         gap_p99_rounds=[r["gap_p99_ms"] for r in rs])
    return st


def pctl(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def main():
    global LOG_DIR, OHA
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default=os.path.join(LT, "results"))
    ap.add_argument("--only", default="", help="comma list of scenarios "
                    "(overhead,saturation,cpu,closed,stream,tenants,memory,cost,scaling)")
    a = ap.parse_args()
    BIN, OHA, LOG_DIR = a.bin, a.oha, a.work
    quick = a.quick
    only = set(a.only.split(",")) if a.only else {"overhead", "saturation", "cpu", "closed", "stream", "tenants",
                                                    "memory", "cost", "scaling"}
    t_start = time.time()
    import cost
    if only == {"cost"}:
        # alone: its own servers, and only its section of bench.md is replaced
        c = cost.measure(BIN, LOG_DIR, quick)
        json.dump(c, open(f"{LOG_DIR}/cost.json", "w"), indent=1)
        cleanup()
        os.makedirs(a.out, exist_ok=True)
        cost.splice(f"{a.out}/bench.md", cost.section(c, cost_header(BIN)))
        log(f"done in {time.time() - t_start:.0f} s; replaced the cost section of {a.out}/bench.md")
        return
    Q = {
        "c1_rounds": 1 if quick else 3, "c1_dur": "1s" if quick else "3s",
        "sweep_dur": "1s" if quick else "3s",
        # steps of 500-1,000 req/s up to 10,000 (where the gateways and nginx top out on a shared core),
        # so a contender's limit is known to within ~15%, not within a factor of two
        "ladder": [2000, 6000, 12000] if quick else
                  [1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500, 6000, 7000, 8000, 9000, 10000, 11000,
                   12000, 14000, 17000, 20000, 24000, 28000, 32000],
        "ladder_litellm": [25, 100] if quick else [25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500],
        "cpu_dur": "1s" if quick else "6s", "cpu_rate": 2000, "cpu_rounds": 1 if quick else 3,
        "closed_dur": "1s" if quick else "5s", "closed_conc": 32,
        "scaling_dur": "1s" if quick else "5s", "scaling_conc": 64, "scaling_rounds": 1 if quick else 3,
        "streams": 100 if quick else 1000, "stream_rounds": 1 if quick else 3,
        "mt_keys": 2000 if quick else 10000, "mt_dur": "1s" if quick else "5s",
        "tight": 10 if quick else 100, "per_key_r": 90, "per_key_t": 75,
        "keys_100k": 1500 if quick else 100000,
    }
    res = {"quick": quick, "Q": Q}
    env_base = dict(os.environ)

    # ---- servers ----
    stub = start("stub", [BIN, "--log", "warn", "stubs", "--latency", "off", "--openai-listen", f"127.0.0.1:{P_STUB}",
                          "--gemini-listen", f"127.0.0.1:{P_STUB + 1}", "--qwen-listen", f"127.0.0.1:{P_STUB + 2}",
                          "--payment-listen", f"127.0.0.1:{P_STUB + 3}"])
    redis_port = 19379
    redis = start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--loglevel", "warning"])
    wait_port(P_STUB, stub, name="stub")
    wait_port(redis_port, redis, name="redis")
    open(f"{LOG_DIR}/nginx.conf", "w").write(nginx_conf(LOG_DIR, "nginx", P_STUB, P["nginx"]))
    srv = {"direct": stub}
    srv["nginx"] = start("nginx", ["nginx", "-c", f"{LOG_DIR}/nginx.conf", "-p", LOG_DIR])
    cfgs = {"leaky-none": leaky_yaml(P["leaky-none"], 19190, filters=False),
            "leaky-full-memory": leaky_yaml(P["leaky-full-memory"], 19191),
            "leaky-full-redis": leaky_yaml(P["leaky-full-redis"], 19192, store="redis", redis_port=redis_port)}
    for n, y in cfgs.items():
        open(f"{LOG_DIR}/{n}.yaml", "w").write(y)
        srv[n] = start(n, [BIN, "--log", "warn", "proxy", "--config", f"{LOG_DIR}/{n}.yaml"])
    open(f"{LOG_DIR}/litellm.yaml", "w").write(litellm_yaml(rpm=100_000_000, tpm=10_000_000_000))
    litellm_env = {**env_base, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                   "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True", "NO_REDOC": "True",
                   "LITELLM_MODE": "PRODUCTION", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                   "TOKENIZERS_PARALLELISM": "false"}
    t_litellm = time.time()
    srv["litellm"] = start("litellm", [os.path.join(os.path.dirname(sys.executable), "litellm"), "--config",
                                       f"{LOG_DIR}/litellm.yaml", "--host", "127.0.0.1", "--port", str(P["litellm"]),
                                       "--num_workers", "2", "--timeout_worker_healthcheck", "300"], env=litellm_env)
    for n in CONTENDERS:
        wait_port(P[n], srv[n], timeout=180 if n == "litellm" else 30, name=n)
    res["litellm_startup_s"] = time.time() - t_litellm
    # LiteLLM's workers start after the port opens; wait until it answers.
    while time.time() - t_litellm < 300:
        if srv["litellm"].poll() is not None:
            die("litellm exited during startup:\n" + tail(f"{LOG_DIR}/litellm.log"))
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {LITELLM_KEY}",
                            "-H", "Content-Type: application/json", "--data-binary", f"@{PAYLOAD}", url_for("litellm")],
                           capture_output=True, text=True)
        if p.stdout == "200":
            break
        time.sleep(0.5)
    else:
        die("litellm never answered 200 within 300 s:\n" + tail(f"{LOG_DIR}/litellm.log"))
    res["litellm_ready_s"] = time.time() - t_litellm
    log(f"LiteLLM ready after {res['litellm_ready_s']:.1f} s")
    res["rss_idle"] = {n: rss_mib(srv[n].pid) for n in CONTENDERS}
    for n in CONTENDERS:
        want = [r"^x-ratelimit-limit-requests: 100000000", r"^ratelimit-policy:.*bench-rpm"] if n.startswith("leaky-full") else []
        curl_check(n, url_for(n), LITELLM_KEY if n == "litellm" else BENCH_KEY, want)
    log("all contenders answer 200; warming up")
    for n in CONTENDERS:
        oha(n, "1s" if quick else "2s", 10, tag="warm-up")

    # ---- 1. overhead at c1 ----
    if "overhead" in only:
        rounds = []
        for r in range(Q["c1_rounds"]):
            row = {}
            for n in CONTENDERS:
                log(f"overhead round {r + 1}/{Q['c1_rounds']}: {n} c1")
                row[n] = oha(n, Q["c1_dur"], 1, tag="c1")
            rounds.append(row)
        res["c1_rounds"] = rounds
        agg = {}
        for n in CONTENDERS:
            agg[n] = {k: statistics.median(rr[n][k] for rr in rounds) for k in ("p50", "p90", "p99", "p999", "rps")}
            agg[n]["added_p50"] = statistics.median(rr[n]["p50"] - rr["direct"]["p50"] for rr in rounds)
            agg[n]["added_p99"] = statistics.median(rr[n]["p99"] - rr["direct"]["p99"] for rr in rounds)
            agg[n]["cmd"] = rounds[0][n]["cmd"]
        res["c1"] = agg

    # ---- 2. saturation sweep ----
    if "saturation" in only:
        active = set(CONTENDERS)
        sweep = {n: [] for n in CONTENDERS}
        rates = sorted(set(Q["ladder"]) | set(Q["ladder_litellm"]))
        for rate in rates:
            for n in CONTENDERS:
                ladder = Q["ladder_litellm"] if n == "litellm" else Q["ladder"]
                if n not in active or rate not in ladder:
                    continue
                log(f"saturation {n} at {rate} req/s")
                x = oha(n, Q["sweep_dur"], 64, rate=rate, allow_transport_errors=True, tag=f"q{rate}")
                x["rate"] = rate
                x["sustained"] = x["errors"] == 0 and x["rps"] >= 0.95 * rate
                sweep[n].append(x)
                if not x["sustained"] or x["p99"] >= 10:
                    active.discard(n)
        res["sweep"] = sweep
        res["max_rate"] = {}
        for n in CONTENDERS:
            out = {}
            for lim in (5, 10):
                ok = [x["rate"] for x in sweep[n] if x["sustained"] and x["p99"] < lim]
                out[lim] = max(ok) if ok else 0
            out["sustained"] = max([x["rate"] for x in sweep[n] if x["sustained"]] or [0])
            res["max_rate"][n] = out

    # ---- 3. CPU per request at a fixed rate ----
    # Rounds interleaved across the contenders, the median round per contender: one 6 s sample
    # moved 15-30% between runs on this shared VM, more than the differences measured.
    def cpu_runs(names, dur, conc, rate_of, tag):
        runs = {n: [] for n in names}
        for r in range(Q["cpu_rounds"]):
            for n in names:
                rate = rate_of(n)
                c0 = cpu_seconds(srv[n].pid)
                log(f"{tag} {n}" + (f" at {rate} req/s" if rate else f" at c{conc}") + f", round {r + 1}")
                x = oha(n, dur, conc, rate=rate, tag=f"{tag} {'q' + str(rate) if rate else 'c' + str(conc)} r{r + 1}")
                c1 = cpu_seconds(srv[n].pid)
                runs[n].append((x, c1 - c0))
        out = {}
        for n, rs in runs.items():
            per = [c / x["ok"] * 1e6 for x, c in rs]
            x, c = rs[sorted(range(len(rs)), key=lambda i: per[i])[len(rs) // 2]]  # the median round
            out[n] = {"achieved": x["rps"], "requests": x["ok"], "cpu_s": c, "p99": x["p99"], "rps": x["rps"],
                      "us_per_req": c / x["ok"] * 1e6, "rounds_us": per, "cmd": x["cmd"]}
        return out

    if "cpu" in only:
        def cpu_rate(n):
            if n != "litellm":
                return Q["cpu_rate"]
            sus = res.get("max_rate", {}).get(n, {}).get("sustained") or min(Q["ladder_litellm"])
            return min(Q["cpu_rate"], sus)
        res["cpu"] = cpu_runs(CONTENDERS, Q["cpu_dur"], 64, cpu_rate, "cpu")
        for n in CONTENDERS:
            res["cpu"][n]["rate"] = cpu_rate(n)
        res["rss_load"] = {n: rss_mib(srv[n].pid) for n in CONTENDERS}
        # the stub serves every contender: its own share is the "direct" row

    # ---- 3b. CPU per request, closed loop: each server on its core, as fast as it answers ----
    if "closed" in only:
        # LiteLLM is hundreds of times slower (its fixed-rate figure says enough); the Redis gateway
        # saturated on a core it shares with Redis can miss its 20 ms store timeout, and a fallback
        # would no longer be the full chain (the metrics check below refuses the run then)
        res["closed"] = cpu_runs(("direct", "nginx", "leaky-none", FULL_MEMORY), Q["closed_dur"], Q["closed_conc"],
                                 lambda n: None, "closed loop")

    # Redis must not have degraded or refused: check the full gateways' metrics.
    res["metrics_check"] = check_metrics([("leaky-full-memory", 19191), ("leaky-full-redis", 19192)])

    # Stop the non-streaming contenders before the remaining scenarios (they have their own gateways).
    for n in ("nginx", "leaky-none", "leaky-full-redis", "litellm"):
        stop(srv[n])

    # ---- 4. streaming ----
    if "stream" in only:
        stub_rt = start("stub-realistic", [BIN, "--log", "warn", "stubs", "--latency", "realistic", "--openai-listen",
                                           f"127.0.0.1:{P_STUB_RT}", "--gemini-listen", f"127.0.0.1:{P_STUB_RT + 1}",
                                           "--qwen-listen", f"127.0.0.1:{P_STUB_RT + 2}", "--payment-listen",
                                           f"127.0.0.1:{P_STUB_RT + 3}"])
        open(f"{LOG_DIR}/leaky-stream.yaml", "w").write(leaky_yaml(P_STREAM, 19193, stub=P_STUB_RT))
        gw = start("leaky-stream", [BIN, "--log", "warn", "proxy", "--config", f"{LOG_DIR}/leaky-stream.yaml"])
        open(f"{LOG_DIR}/nginx-stream.conf", "w").write(
            nginx_conf(LOG_DIR, "nginx-stream", P_STUB_RT, P_STREAM_NGINX, stream=True))
        ng = start("nginx-stream", ["nginx", "-c", f"{LOG_DIR}/nginx-stream.conf", "-p", LOG_DIR])
        wait_port(P_STUB_RT, stub_rt, name="stub-realistic")
        wait_port(P_STREAM, gw, name="leaky-stream")
        wait_port(P_STREAM_NGINX, ng, name="nginx-stream")
        # one request first: the prompt tokenizer loads lazily, keep that out of the streams' TTFT
        curl_check("leaky-stream", f"http://127.0.0.1:{P_STREAM}/v1/chat/completions", BENCH_KEY)
        res["stream"] = stream_rounds(gw, {"direct": P_STUB_RT, "nginx": P_STREAM_NGINX, "leaky": P_STREAM},
                                      Q["streams"], Q["stream_rounds"])
        stop(gw)
        stop(ng)
        stop(stub_rt)

    # ---- 5. multi-tenant: 10k keys through the full chain, and limiter accuracy ----
    if "tenants" in only:
        keys = mt_keys(Q["mt_keys"], Q["tight"])
        mt = {}
        for variant, port, admin in (("memory", P_MT, 19194), ("redis", P_MT_REDIS, 19195)):
            y = leaky_yaml(port, admin, store=variant, redis_port=redis_port, extra_tiers=MT_TIERS, extra_keys=keys)
            open(f"{LOG_DIR}/leaky-mt-{variant}.yaml", "w").write(y)
            t0 = time.time()
            gw = start(f"leaky-mt-{variant}", [BIN, "--log", "warn", "proxy", "--config", f"{LOG_DIR}/leaky-mt-{variant}.yaml"])
            wait_port(port, gw, timeout=120, name=f"leaky-mt-{variant}")
            m = {"startup_s": time.time() - t0, "rss_idle": rss_mib(gw.pid)}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            curl_check(f"leaky-mt-{variant}", url, "lt-mt-00001", [r"^x-ratelimit-limit-requests: 6000"])
            log(f"multi-tenant load over {Q['mt_keys']} keys ({variant})")
            m["load"] = wrk(url, Q["mt_dur"], 50, os.path.join(HERE, "tenants.lua"),
                            {"BENCH_KEYS": str(Q["mt_keys"]), "BENCH_PAYLOAD": PAYLOAD})
            m["rss_load"] = rss_mib(gw.pid)
            # accuracy: keys driven over their limit
            for kind, per_key in (("r", Q["per_key_r"]), ("t", Q["per_key_t"])):
                kf = f"{LOG_DIR}/tight-{kind}.txt"
                open(kf, "w").write("".join(f"lt-tight-{kind}-{i:03d}\n" for i in range(Q["tight"])))
                out = f"{LOG_DIR}/accuracy-{variant}-{kind}.json"
                argv = ["taskset", "-c", "1", sys.executable, os.path.join(HERE, "clients.py"), "accuracy", url, kf,
                        str(per_key), out, PAYLOAD]
                COMMANDS.append((f"accuracy-{variant}-{kind}", " ".join(shlex.quote(x) for x in argv)))
                log(f"limiter accuracy ({variant}, tight-{kind}): {Q['tight']} keys x {per_key} requests")
                subprocess.run(argv, check=True, cwd=ROOT)
                acc = json.load(open(out))
                # (`unit_cost`: a local `cost` would shadow the cost module for the rest of main)
                rate, unit_cost = TIGHT_R if kind == "r" else TIGHT_T
                admitted = expected = refused = 0
                for k, v in acc["keys"].items():
                    other = {s: c for s, c in v["counts"].items() if s not in ("200", "429")}
                    if other:
                        die(f"accuracy {variant} {k}: unexpected statuses {other}")
                    admitted += v["counts"].get("200", 0)
                    refused += v["counts"].get("429", 0)
                    # GCRA from a full bucket: burst (= rate) at once, then rate per minute.
                    units = rate + rate * v["elapsed_s"] / 60
                    expected += min(per_key, int(units // unit_cost))
                m[f"acc_{kind}"] = {"keys": len(acc["keys"]), "per_key": per_key, "admitted": admitted,
                                    "refused": refused, "expected": expected, "wall_s": acc["wall_s"]}
                if refused == 0:
                    die(f"accuracy {variant} tight-{kind}: nothing refused; keys were not driven over their limit")
            mt[variant] = m
            stop(gw)
        res["tenants"] = mt

    # ---- 6. memory: idle, under load, and 100k active rate-limit keys ----
    if "memory" in only:
        n = Q["keys_100k"]
        y = leaky_yaml(P_100K, 19196, extra_keys=many_keys(n))
        open(f"{LOG_DIR}/leaky-100k.yaml", "w").write(y)
        t0 = time.time()
        gw = start("leaky-100k", [BIN, "--log", "warn", "proxy", "--config", f"{LOG_DIR}/leaky-100k.yaml"])
        wait_port(P_100K, gw, timeout=180, name="leaky-100k")
        mem = {"keys": n, "startup_s": time.time() - t0, "rss_config": rss_mib(gw.pid)}
        url = f"http://127.0.0.1:{P_100K}/v1/chat/completions"
        curl_check("leaky-100k", url, "lt-k-000000", [r"^x-ratelimit-limit-requests: 100000000"])
        log(f"memory: one request per key over {n} keys")
        # each key once, over 50 keep-alive connections; the client ends when the last key answered
        out = f"{LOG_DIR}/keys-once.json"
        argv = ["taskset", "-c", "1", sys.executable, os.path.join(HERE, "clients.py"), "once", url, "lt-k-",
                str(n), "50", PAYLOAD, out]
        COMMANDS.append(("keys-once", " ".join(shlex.quote(x) for x in argv)))
        subprocess.run(argv, check=True, cwd=ROOT)
        mem["load"] = json.load(open(out))
        if mem["load"]["counts"] != {"200": n}:
            die(f"memory: expected {n} answers 200, got {mem['load']['counts']}")
        mem["rss_active"] = rss_mib(gw.pid)
        res["memory"] = mem
        stop(gw)

    # ---- 7. instructions and syscalls per request (bench.d/cost.py; its own servers) ----
    if "cost" in only:
        res["cost"] = cost.measure(BIN, LOG_DIR, quick)
        res["cost_header"] = cost_header(BIN)

    # ---- 8. scaling: two threads against one, nginx's two workers against one as the reference ----
    if "scaling" in only:
        res["scaling"] = scaling(Q, BIN)

    res["metrics_check_after"] = True
    res["elapsed_s"] = time.time() - t_start
    json.dump(res, open(f"{LOG_DIR}/results.json", "w"), indent=1, default=str)
    cleanup()
    import report
    report.write(res, COMMANDS, a.out, BIN, OHA, sys.executable)
    log(f"done in {res['elapsed_s']:.0f} s; wrote {a.out}/bench.md")


def scaling(Q, bin_):
    """Closed-loop throughput of nginx with 1 and 2 workers and of the full chain (memory) with
    `threads: 1` and `threads: 2`. Everything here (its own stub, the servers, oha) is unpinned: the
    machine's two cores are shared by all three, as they would be on a 2-core host, so the ratio is
    what a second thread buys on this box, measured the same way for nginx and the gateway.

    The four servers run side by side (idle unless driven) and each round drives them in turn; a
    configuration's figure is its median round. One 5-second run each gave ratios from 0.72x to 1.19x
    for the same build on the same afternoon."""
    stub = start("scaling-stub", [bin_, "--log", "warn", "stubs", "--latency", "off", "--openai-listen",
                                  f"127.0.0.1:{P_SCALE_STUB}", "--gemini-listen", f"127.0.0.1:{P_SCALE_STUB + 1}",
                                  "--qwen-listen", f"127.0.0.1:{P_SCALE_STUB + 2}", "--payment-listen",
                                  f"127.0.0.1:{P_SCALE_STUB + 3}"], cpu="0,1")
    wait_port(P_SCALE_STUB, stub, name="scaling-stub")
    configs = (("nginx", 1), ("nginx", 2), ("leaky-full-memory", 1), ("leaky-full-memory", 2))
    urls, procs = {}, []
    for i, (n, k) in enumerate(configs):
        tag, port = f"scaling-{n}-{k}", P_SCALE + i
        if n == "nginx":
            open(f"{LOG_DIR}/{tag}.conf", "w").write(nginx_conf(LOG_DIR, tag, P_SCALE_STUB, port, workers=k))
            p = start(tag, ["nginx", "-c", f"{LOG_DIR}/{tag}.conf", "-p", LOG_DIR], cpu="0,1")
        else:
            yaml = leaky_yaml(port, P_SCALE_ADMIN + i, stub=P_SCALE_STUB, threads=k)
            open(f"{LOG_DIR}/{tag}.yaml", "w").write(yaml)
            p = start(tag, [bin_, "--log", "warn", "proxy", "--config", f"{LOG_DIR}/{tag}.yaml"], cpu="0,1")
        wait_port(port, p, name=tag)
        urls[(n, k)] = f"http://127.0.0.1:{port}/v1/chat/completions"
        curl_check(tag, urls[(n, k)], BENCH_KEY)
        oha(n, "1s", Q["scaling_conc"], tag=f"{tag} warm-up", cpu="0,1", url=urls[(n, k)])
        procs.append(p)
    runs = {c: [] for c in configs}
    for r in range(Q["scaling_rounds"]):
        for n, k in configs:
            log(f"scaling: {n} with {k} worker(s)/thread(s), closed loop c{Q['scaling_conc']}, "
                f"round {r + 1}/{Q['scaling_rounds']}")
            x = oha(n, Q["scaling_dur"], Q["scaling_conc"], tag=f"scaling-{n}-{k}", cpu="0,1", url=urls[(n, k)])
            runs[(n, k)].append(x)
    out = {}
    for (n, k), xs in runs.items():
        mid = sorted(xs, key=lambda x: x["rps"])[len(xs) // 2]
        out[f"{n}/{k}"] = {"rps": mid["rps"], "p99": mid["p99"], "cmd": mid["cmd"],
                           "rounds": [x["rps"] for x in xs]}
    for p in procs:
        stop(p)
    stop(stub)
    return out


def cost_header(bin_):
    """Which build the cost section measured (it can be regenerated apart from the rest of bench.md)."""
    # BENCH_COMMIT names the commit of a binary built elsewhere (BENCH_SKIP_BUILD=1 with another target)
    rev = os.environ.get("BENCH_COMMIT") or sh("git rev-parse --short HEAD")
    dirty = "" if os.environ.get("BENCH_COMMIT") else subprocess.run(
        "git status --porcelain --untracked-files=no", shell=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    return (f"Measured {now:%Y-%m-%d %H:%M} UTC, commit `{rev}`{' (with uncommitted changes)' if dirty else ''}, "
            f"release build `{os.path.relpath(bin_, ROOT)}`.")


def check_metrics(gws):
    out = {}
    for name, admin in gws:
        p = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{admin}/metrics"], capture_output=True, text=True)
        t = p.stdout
        bad = []
        for line in t.splitlines():
            if line.startswith("leaky_ratelimit_decisions_total") and re.search(r'decision="(denied|unavailable|delayed)"', line):
                if float(line.rsplit(" ", 1)[1]) > 0:
                    bad.append(line)
            if line.startswith(("leaky_ratelimit_store_errors_total", "leaky_ratelimit_store_fallbacks_total")):
                if float(line.rsplit(" ", 1)[1]) > 0:
                    bad.append(line)
        if bad:
            die(f"{name}: the limiter refused or degraded during the run:\n" + "\n".join(bad))
        allowed = sum(float(l.rsplit(" ", 1)[1]) for l in t.splitlines()
                      if l.startswith("leaky_ratelimit_decisions_total") and 'decision="allowed"' in l)
        out[name] = allowed
    return out


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    # cost.py and report.py `import bench`: let them see this run's globals (OHA, LOG_DIR, PROCS), not a
    # second, unconfigured copy of the module
    sys.modules["bench"] = sys.modules["__main__"]
    main()
