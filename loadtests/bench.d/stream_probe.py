"""Why do 1,000 concurrent streams arrive coalesced? A small experiment (issue 19, point 3).

    python3 loadtests/bench.d/stream_probe.py BIN STREAMS [STREAMS ...]

For each count: the stub with realistic pacing and a full-chain gateway (bench.d/full-memory.yaml),
both on CPU 0 as in ./loadtests/bench; `bench.d/clients.py sse` on CPU 1. While the streams run,
`perf stat` counts the gateway's syscalls with the kernel's tracepoints (no ptrace, so the gateway
runs at full speed) and /proc gives the CPU of the gateway and of the stub. Printed per count:
events received, the gateway's upstream reads (`recvfrom`) and client writes (`sendto`/`writev`) per
event, its CPU per event, the share of CPU 0 both servers used, and the client's TTFT and gaps.

Reading it: writes per event ≈ 1 means the gateway sends every chunk it reads at once (no buffering of
its own); reads per event well under 1 means several upstream events were already waiting when the
gateway got to read: it ran late, and what arrives together leaves together. With CPU 0 near 100%
that lateness is the shared core's queue, not a flush or Nagle setting.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402

sys.modules["bench"] = bench
P_STUB, P_GW, P_ADMIN = 19711, 19784, 19794
EVENTS = ["recvfrom", "sendto", "writev", "write", "epoll_wait"]


def run(bin_, work, count):
    stub = bench.start(f"probe-stub-{count}", [bin_, "--log", "warn", "stubs", "--latency", "realistic",
                                               "--openai-listen", f"127.0.0.1:{P_STUB}", "--gemini-listen",
                                               f"127.0.0.1:{P_STUB + 1}", "--qwen-listen", f"127.0.0.1:{P_STUB + 2}",
                                               "--payment-listen", f"127.0.0.1:{P_STUB + 3}"])
    open(f"{work}/probe.yaml", "w").write(bench.leaky_yaml(P_GW, P_ADMIN, stub=P_STUB))
    gw = bench.start(f"probe-gw-{count}", [bin_, "--log", "warn", "proxy", "--config", f"{work}/probe.yaml"])
    bench.wait_port(P_STUB, stub, name="probe-stub")
    bench.wait_port(P_GW, gw, name="probe-gw")
    url = f"http://127.0.0.1:{P_GW}/v1/chat/completions"
    bench.curl_check("probe-gw", url, bench.BENCH_KEY)
    out = f"{work}/probe-{count}.json"
    perf_out = f"{work}/probe-perf-{count}.txt"
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", perf_out, "-e",
                             ",".join(f"syscalls:sys_enter_{e}" for e in EVENTS), "-p", str(gw.pid)])
    time.sleep(0.5)
    g0, s0, t0 = bench.cpu_seconds(gw.pid), bench.cpu_seconds(stub.pid), time.time()
    subprocess.run(["taskset", "-c", "1", sys.executable, os.path.join(HERE, "clients.py"), "sse", url,
                    bench.STREAM_PAYLOAD, bench.BENCH_KEY, str(count), out], check=True, cwd=bench.ROOT)
    g1, s1, t1 = bench.cpu_seconds(gw.pid), bench.cpu_seconds(stub.pid), time.time()
    perf.send_signal(2)
    perf.wait(10)
    bench.stop(gw)
    bench.stop(stub)
    calls = {}
    for line in open(perf_out):
        f = line.strip().split(",")
        if len(f) > 2 and f[2].startswith("syscalls:sys_enter_"):
            calls[f[2][len("syscalls:sys_enter_"):]] = int(f[0] or 0)
    r = json.load(open(out))
    n = r["events"]
    return {"streams": count, "events": n, "failed": r["failed"],
            "per_event": {k: v / n for k, v in calls.items()},
            "gw_us_per_event": (g1 - g0) / n * 1e6, "cpu0_share": ((g1 - g0) + (s1 - s0)) / (t1 - t0),
            "gw_share": (g1 - g0) / (t1 - t0), "ttft_p50_ms": r["ttft_p50_ms"], "gap_p50_ms": r["gap_p50_ms"],
            "gap_p99_ms": r["gap_p99_ms"], "wall_s": r["wall_s"]}


def main():
    bin_, counts = sys.argv[1], [int(c) for c in sys.argv[2:]]
    work = bench.LOG_DIR = subprocess.run(["mktemp", "-d", "/tmp/leaky-probe.XXXXXX"], capture_output=True,
                                          text=True).stdout.strip()
    rows = [run(bin_, work, c) for c in counts]
    bench.cleanup()
    print("| streams | events | upstream reads/event | client writes/event | epoll_wait/event | eventfd writes/event "
          "| gateway CPU µs/event | CPU 0 busy (gateway + stub) | gateway alone | TTFT p50 | gap p50 | gap p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        p = x["per_event"]
        print(f"| {x['streams']:,} | {x['events']:,} | {p.get('recvfrom', 0):.2f} | "
              f"{p.get('sendto', 0) + p.get('writev', 0):.2f} | {p.get('epoll_wait', 0):.2f} | {p.get('write', 0):.2f} | "
              f"{x['gw_us_per_event']:.1f} | {x['cpu0_share']:.0%} | {x['gw_share']:.0%} | {x['ttft_p50_ms']:.0f} ms | "
              f"{x['gap_p50_ms']:.1f} ms | {x['gap_p99_ms']:.1f} ms |")
    json.dump(rows, open(f"{work}/probe.json", "w"), indent=1)


if __name__ == "__main__":
    main()
