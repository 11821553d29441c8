"""Scenario `cost` of ./loadtests/bench: instructions and syscalls per request, per contender.

Wall-clock CPU figures on a shared 2-core VM move by 15-30% between runs; these two do not:

- instructions per request: the server runs under `valgrind --tool=callgrind`; after a warm-up the
  counters are zeroed (`callgrind_control -z`), a fixed count of keep-alive requests is sent one at a
  time, and the counters are dumped (`callgrind_control --dump`): the dump's total `Ir` / requests.
  Every thread of the server is counted (callgrind serializes them); the stub it calls is not.
- syscalls per request: the server runs natively; after a warm-up `strace -c -f -p PID` attaches to
  every thread, the same fixed count is sent, strace detaches (SIGINT) and its summary's calls / requests.
  `futex` calls are cross-thread wake-ups; `epoll_wait` counts how often a worker parked.

Both use one connection (`oha -c 1 -n N`): the request path's own cost, not how it batches under load.
nginx runs with `master_process off` (its worker's code in one process, so valgrind sees it).
Run alone with `./loadtests/bench --only cost`: it starts its own stub, nginx, gateways and Redis on
ports 195xx and replaces only the cost section of results/bench.md.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import bench

P_STUB = 19501
P_REDIS = 19579
PORTS = {"direct": P_STUB, "nginx": 19580, "leaky-none": 19581, "leaky-full-memory": 19582,
         "leaky-full-redis": 19583, "leaky-full-trace1": 19585, "leaky-full-trace100": 19586}
ADMIN = {"leaky-none": 19591, "leaky-full-memory": 19592, "leaky-full-redis": 19593, "leaky-full-trace1": 19595,
         "leaky-full-trace100": 19596}
# The full chain (memory) with OpenTelemetry tracing on, head-sampled at 1% and 100%, exporting over
# OTLP/HTTP to a sink in this process (`OtlpSink`): the cost of tracing is the difference to the
# full chain's row (the exporter thread is one of the gateway's threads, so it is counted).
TRACE_RATIO = {"leaky-full-trace1": 0.01, "leaky-full-trace100": 1.0}
P_OTLP = 19518
LABEL = {**bench.LABEL, "leaky-full-trace1": "Leaky Tokens, full chain, memory, tracing 1%",
         "leaky-full-trace100": "Leaky Tokens, full chain, memory, tracing 100%"}
BEGIN, END = "<!-- cost:begin -->", "<!-- cost:end -->"
# Per streamed event: the full chain (memory) in front of the stub with realistic pacing.
P_STUB_RT, P_STREAM, ADMIN_STREAM = 19511, 19584, 19594


def stub_argv(bin_):
    return [bin_, "--log", "warn", "stubs", "--latency", "off", "--openai-listen", f"127.0.0.1:{P_STUB}",
            "--gemini-listen", f"127.0.0.1:{P_STUB + 1}", "--qwen-listen", f"127.0.0.1:{P_STUB + 2}",
            "--payment-listen", f"127.0.0.1:{P_STUB + 3}"]


def server_argv(name, bin_, work):
    """The contender's own command line (without valgrind/strace)."""
    if name == "direct":
        return stub_argv(bin_)
    if name == "nginx":
        conf = bench.nginx_conf(work, "nginx", P_STUB, PORTS["nginx"])
        conf = conf.replace("daemon off;", "daemon off;\nmaster_process off;")
        open(f"{work}/cost-nginx.conf", "w").write(conf)
        return ["nginx", "-c", f"{work}/cost-nginx.conf", "-p", work]
    y = bench.leaky_yaml(PORTS[name], ADMIN[name], stub=P_STUB, filters=name != "leaky-none",
                         store="redis" if name == "leaky-full-redis" else "memory", redis_port=P_REDIS)
    open(f"{work}/cost-{name}.yaml", "w").write(y)
    trace = []
    if name in TRACE_RATIO:
        trace = ["--otlp-endpoint", f"http://127.0.0.1:{P_OTLP}", "--trace-sample-ratio", str(TRACE_RATIO[name])]
    return [bin_, "--log", "warn", *trace, "proxy", "--config", f"{work}/cost-{name}.yaml"]


class OtlpSink:
    """An OTLP/HTTP receiver that accepts every export (200, an empty `ExportTraceServiceResponse`)
    and remembers when the last one arrived, so a measurement can wait for the exporter to go idle."""

    def __init__(self, port):
        import http.server
        import threading
        sink = self
        self.last = 0.0
        self.exports = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.last, sink.exports = time.time(), sink.exports + 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settle(self, name, quiet=3.0, limit=120.0):
        """Waits until no export has arrived for `quiet` seconds: the spans of the requests sent so
        far are exported (the gateway flushes every 500 ms), so the window counts their export too."""
        if name not in TRACE_RATIO:
            return
        deadline = time.time() + limit
        start = time.time()
        while time.time() < deadline and time.time() - max(self.last, start) < quiet:
            time.sleep(0.2)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


SINK = None


def drive(name, n):
    """n keep-alive requests on one connection; dies on any non-2xx or transport error."""
    argv = ["taskset", "-c", "1", bench.OHA, "-n", str(n), "-c", "1", "--no-tui", "--output-format", "json",
            "-m", "POST", *bench.headers_for(name), "-D", bench.PAYLOAD,
            f"http://127.0.0.1:{PORTS[name]}/v1/chat/completions"]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=bench.ROOT)
    if p.returncode != 0:
        bench.die(f"cost {name}: oha failed: {shlex.join(argv)}\n{p.stderr[-2000:]}")
    j = json.loads(p.stdout)
    codes = {int(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    if codes != {200: n} or j.get("errorDistribution"):
        bench.die(f"cost {name}: expected {n} answers 200, got {codes} {j.get('errorDistribution')}")
    return shlex.join(argv)


def redis_calls():
    out = subprocess.run(["redis-cli", "-p", str(P_REDIS), "info", "commandstats"], capture_output=True,
                         text=True).stdout
    return sum(int(c) for c in re.findall(r"calls=(\d+)", out))


def instructions(name, bin_, work, n, warm):
    """Ir per request of the contender's process (all threads) over n requests after warm ones."""
    out = f"{work}/callgrind-{name}.out"
    argv = ["valgrind", "--tool=callgrind", "--vgdb=yes", f"--callgrind-out-file={out}", "--dump-instr=no",
            *server_argv(name, bin_, work)]
    p = bench.start(f"callgrind-{name}", argv)
    bench.wait_port(PORTS[name], p, timeout=240, name=f"callgrind-{name}")
    drive(name, warm)
    SINK.settle(name)
    ctl = lambda *a: subprocess.run(["callgrind_control", *a, str(p.pid)], capture_output=True, text=True,
                                    timeout=120)
    ctl("-z")
    drive(name, n)
    SINK.settle(name)
    ctl("--dump=measured")
    total = wait_total(out)
    bench.stop(p)
    return total / n


def wait_total(out):
    """The `totals` of the dump `callgrind_control --dump=measured` wrote (`<out>.1`)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        # the dump's header names its trigger; `totals` is its last line
        try:
            t = open(f"{out}.1", errors="replace").read()
        except OSError:
            t = ""
        m = re.search(r"^totals: (\d+)", t, re.M)
        if "Trigger: dump measured" in t and m:
            return int(m.group(1))
        time.sleep(0.5)
    bench.die(f"cost: no callgrind dump of the measured window at {out}.1")


def attach(pid, out):
    """`strace -c -f` on every thread of `pid`, once it is attached."""
    st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stderr=subprocess.PIPE, text=True)
    # strace prints one "attached" line per thread; wait for the first, then let it attach the rest
    st.stderr.readline()
    time.sleep(0.5)
    return st, out


def detach(st, out):
    """Stops `strace -c` and returns its summary: {syscall: calls}."""
    st.send_signal(signal.SIGINT)
    st.wait(30)
    calls = {}
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and f[-1] != "total" and f[0][0].isdigit():
            # % time, seconds, usecs/call, calls, [errors,] syscall
            calls[f[-1]] = int(f[3])
    return calls


def syscalls(name, bin_, work, n, warm):
    """{syscall: calls per request} of the contender (all threads) over n requests after warm ones."""
    p = bench.start(f"strace-{name}", server_argv(name, bin_, work))
    bench.wait_port(PORTS[name], p, name=f"strace-{name}")
    drive(name, warm)
    SINK.settle(name)
    # nginx (master_process off) and the gateways are one process each; the stub too
    st, txt = attach(p.pid, f"{work}/strace-{name}.txt")
    r0 = redis_calls() if name == "leaky-full-redis" else 0
    drive(name, n)
    SINK.settle(name)
    r1 = redis_calls() if name == "leaky-full-redis" else 0
    calls = detach(st, txt)
    bench.stop(p)
    per = {k: v / n for k, v in calls.items()}
    return per, (r1 - r0) / n


def streams(bin_, work, how, count):
    """The full chain relaying `count` concurrent paced streams with the gateway under `how`
    ("callgrind" or "strace"): (instructions or {syscall: calls} per event, events)."""
    y = bench.leaky_yaml(P_STREAM, ADMIN_STREAM, stub=P_STUB_RT)
    open(f"{work}/cost-stream.yaml", "w").write(y)
    gw_argv = [bin_, "--log", "warn", "proxy", "--config", f"{work}/cost-stream.yaml"]
    out = f"{work}/callgrind-stream.out"
    if how == "callgrind":
        gw_argv = ["valgrind", "--tool=callgrind", "--vgdb=yes", f"--callgrind-out-file={out}",
                   "--dump-instr=no", *gw_argv]
    gw = bench.start(f"{how}-stream", gw_argv)
    bench.wait_port(P_STREAM, gw, timeout=240, name=f"{how}-stream")
    url = f"http://127.0.0.1:{P_STREAM}/v1/chat/completions"
    # one request first: the prompt tokenizer loads lazily
    bench.curl_check("cost-stream", url, bench.BENCH_KEY)
    client = ["taskset", "-c", "1", sys.executable, os.path.join(bench.HERE, "clients.py"), "sse", url,
              bench.STREAM_PAYLOAD, bench.BENCH_KEY, str(count), f"{work}/cost-sse-{how}.json"]
    if how == "callgrind":
        subprocess.run(["callgrind_control", "-z", str(gw.pid)], capture_output=True, timeout=120)
        subprocess.run(client, check=True, cwd=bench.ROOT)
        subprocess.run(["callgrind_control", "--dump=measured", str(gw.pid)], capture_output=True, timeout=120)
        value = wait_total(out)
    else:
        st, txt = attach(gw.pid, f"{work}/strace-stream.txt")
        subprocess.run(client, check=True, cwd=bench.ROOT)
        value = detach(st, txt)
    bench.stop(gw)
    r = json.load(open(f"{work}/cost-sse-{how}.json"))
    if r["failed"] or not r["events"]:
        bench.die(f"cost streams ({how}): {r['failed']} of {r['streams']} failed: {r['failures']}")
    n = r["events"]
    return (value / n if how == "callgrind" else {k: v / n for k, v in value.items()}), n


def measure(bin_, work, quick):
    global SINK
    n, warm = (200, 50) if quick else (1000, 200)
    res = {"n": n, "warm": warm, "rows": {}}
    SINK = OtlpSink(P_OTLP)
    stub = None
    redis = bench.start("cost-redis", ["redis-server", "--port", str(P_REDIS), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--loglevel", "warning"])
    bench.wait_port(P_REDIS, redis, name="cost-redis")
    for name in PORTS:
        if name != "direct" and stub is None:
            stub = bench.start("cost-stub", stub_argv(bin_))
            bench.wait_port(P_STUB, stub, name="cost-stub")
        if name == "direct" and stub is not None:
            bench.stop(stub)
            stub = None
        bench.log(f"cost {name}: {n} requests under callgrind")
        ir = instructions(name, bin_, work, n, warm)
        bench.log(f"cost {name}: {n} requests under strace")
        per, redis_per = syscalls(name, bin_, work, n, warm)
        res["rows"][name] = {"ir": ir, "sys": sum(per.values()), "per": per, "redis": redis_per}
        bench.log(f"cost {name}: {ir:,.0f} instructions/request, {sum(per.values()):.1f} syscalls/request")
    bench.stop(stub)
    bench.stop(redis)
    SINK.stop()
    stub_rt = bench.start("cost-stub-realistic", [bin_, "--log", "warn", "stubs", "--latency", "realistic",
                                                  "--openai-listen", f"127.0.0.1:{P_STUB_RT}", "--gemini-listen",
                                                  f"127.0.0.1:{P_STUB_RT + 1}", "--qwen-listen",
                                                  f"127.0.0.1:{P_STUB_RT + 2}", "--payment-listen",
                                                  f"127.0.0.1:{P_STUB_RT + 3}"])
    bench.wait_port(P_STUB_RT, stub_rt, name="cost-stub-realistic")
    count = 10 if quick else 50
    bench.log(f"cost streams: {count} concurrent paced streams under callgrind")
    ir, events = streams(bin_, work, "callgrind", count)
    bench.log(f"cost streams: {count} concurrent paced streams under strace")
    per, _ = streams(bin_, work, "strace", count)
    res["stream"] = {"streams": count, "events": events, "ir": ir, "per": per, "sys": sum(per.values())}
    bench.log(f"cost streams: {ir:,.0f} instructions/event, {sum(per.values()):.2f} syscalls/event")
    bench.stop(stub_rt)
    return res


SHOWN = ("read", "recvfrom", "write", "writev", "sendto", "epoll_wait", "epoll_ctl", "futex", "sched_yield")


def section(cost, header):
    rows, ng = cost["rows"], cost["rows"]["nginx"]
    L = [BEGIN, f"## 7. Cost per request: instructions and syscalls ({cost['n']:,} keep-alive requests, one connection)", "",
         header, "",
         "Figures that do not move with this machine's noise (`bench.d/cost.py`): instructions per request from "
         "`valgrind --tool=callgrind` (counters zeroed after "
         f"{cost['warm']} warm-up requests, dumped after the measured {cost['n']:,}; every thread of the server, not the "
         "stub behind it) and syscalls per request from `strace -c -f -p PID` over the same count, run natively. "
         "Requests: `oha -n N -c 1` with `payloads/chat.json`. nginx runs with `master_process off`. "
         "`./loadtests/bench --only cost` regenerates this section alone. The two tracing rows are the full chain "
         "(memory) with OpenTelemetry tracing on (`--otlp-endpoint`, `--trace-sample-ratio` 0.01 and 1), exporting "
         "over OTLP/HTTP to a sink in the bench script; each window ends once the exporter has gone idle, so the "
         "export of the measured requests' spans is counted (the exporter is a thread of the gateway).", "",
         "| contender | instructions/request | ÷ nginx | syscalls/request | ÷ nginx | "
         + " | ".join(SHOWN) + " | other | Redis commands/request |",
         "|---|---|---|---|---|" + "---|" * (len(SHOWN) + 2)]
    for name, x in rows.items():
        other = x["sys"] - sum(x["per"].get(k, 0) for k in SHOWN)
        redis = f"{x['redis']:.2f}" if name == "leaky-full-redis" else "–"
        L.append(f"| {LABEL[name]} | {x['ir']:,.0f} | {x['ir'] / ng['ir']:.2f}× | {x['sys']:.1f} | "
                 f"{x['sys'] / ng['sys']:.2f}× | " + " | ".join(f"{x['per'].get(k, 0):.2f}" for k in SHOWN)
                 + f" | {other:.2f} | {redis} |")
    st = cost.get("stream")
    if st:
        other = st["sys"] - sum(st["per"].get(k, 0) for k in SHOWN)
        L += ["", f"Per streamed event: the full chain (memory) relaying {st['streams']} concurrent streams of "
              "`payloads/chat-stream.json` from the stub with realistic pacing (`--latency realistic`), "
              f"`bench.d/clients.py sse`; {st['events']:,} events (each stream's request, metering and "
              "settlement included, spread over its events). Instructions per event are stable; the syscalls are "
              "not quite: strace slows the gateway, so upstream reads batch and `recvfrom` per event comes out "
              "lower than at full speed (`bench.d/stream_probe.py` counts them with perf tracepoints instead).", "",
              "| path | instructions/event | syscalls/event | " + " | ".join(SHOWN) + " | other |",
              "|---|---|---|" + "---|" * (len(SHOWN) + 1),
              f"| full chain, memory | {st['ir']:,.0f} | {st['sys']:.2f} | "
              + " | ".join(f"{st['per'].get(k, 0):.2f}" for k in SHOWN) + f" | {other:.2f} |"]
    L += ["", END]
    return L


def splice(path, lines):
    """Replace the cost section of an existing bench.md (or append it), leaving the rest as it was."""
    block = "\n".join(lines)
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        a, rest = text.split(BEGIN, 1)
        text = a + block + rest.split(END, 1)[1]
    else:
        anchor = "\n## LiteLLM notes"
        text = text.replace(anchor, "\n" + block + "\n" + anchor, 1) if anchor in text else text + "\n" + block + "\n"
    open(path, "w").write(text)
