#!/usr/bin/env python3
"""What large prompts cost the gateway (issue #11, points 8 and 13). Python 3 stdlib only.

Starts `BIN up --latency off` (gateway + stubs in one process, config/dev.yaml) on free loopback
ports and prints markdown tables:

1. per prompt (single-string chat prompts with the pro key, one at a time): gateway CPU ms
   (utime + stime delta from /proc/PID/stat), peak RSS while it was handled (VmRSS sampled every
   5 ms), the slowest `GET /v1/models` sent back to back meanwhile, and the status returned. The
   proxy runs with one worker thread here, so a request that holds its worker shows;
2. memory, on a fresh process with the shipped config: idle RSS, the peak under 8 concurrent
   10 MiB prompts, and RSS 5 s and 30 s after.

The stubs run in the same process (`up`), so an admitted prompt's CPU includes the stub's own token
count of it; refused prompts never reach the stub.

    loadtests/hardening/cost.py --bin target/release/leaky-tokens
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRO = "lt-demo-pro"
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; index 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples VmRSS every 5 ms while active; `peak` is the highest value seen."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, rss_kib(pid), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def prompt_body(size, kind):
    """A chat request of about `size` bytes whose prompt is one string: `piece` is one word with
    no space (a single pre-tokenizer piece), `words` ordinary words."""
    head = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
    tail = '"}]}'
    n = size - len(head) - len(tail)
    if kind == "piece":
        text = "x" * n
    else:
        unit = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        text = (unit * (n // len(unit) + 1))[:n]
    return (head + text + tail).encode()


def request(port, method, path, body=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {PRO}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


class Gateway:
    def __init__(self, binary, threads=None):
        self.proxy, self.admin = free_port(), free_port()
        stubs = [free_port() for _ in range(3)]
        env = dict(os.environ)
        env.update(
            OPENAI_BASE_URL=f"http://127.0.0.1:{stubs[0]}",
            GEMINI_BASE_URL=f"http://127.0.0.1:{stubs[1]}",
            DASHSCOPE_BASE_URL=f"http://127.0.0.1:{stubs[2]}",
            LEAKY_LOG="warn",
        )
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "up", "--latency", "off", "--config", os.path.join(ROOT, "config/dev.yaml"),
             "--listen", f"127.0.0.1:{self.proxy}", "--admin-listen", f"127.0.0.1:{self.admin}",
             "--openai-listen", f"127.0.0.1:{stubs[0]}", "--gemini-listen", f"127.0.0.1:{stubs[1]}",
             "--qwen-listen", f"127.0.0.1:{stubs[2]}"] + (["--threads", str(threads)] if threads else []),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.pid = self.proc.pid
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if request(self.admin, "GET", "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit("the gateway did not become ready")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_prompt(gw, size, kind):
    body = prompt_body(size, kind)
    result = {}

    def big():
        status, data = request(gw.proxy, "POST", "/v1/chat/completions", body)
        result["status"] = str(status)
        if status != 200:
            try:
                message = json.loads(data)["error"]["message"]
                result["status"] += f" ({message.split(':')[0]})"
            except (ValueError, KeyError, TypeError):
                pass

    cpu0 = cpu_ms(gw.pid)
    with RssSampler(gw.pid) as rss:
        t = threading.Thread(target=big)
        t.start()
        slowest = 0.0
        count = 0
        while t.is_alive():
            start = time.perf_counter()
            request(gw.proxy, "GET", "/v1/models")
            slowest = max(slowest, time.perf_counter() - start)
            count += 1
        t.join()
    cpu = cpu_ms(gw.pid) - cpu0
    return cpu, rss.peak, slowest * 1000, count, result["status"]


def spike(gw, n, size, waits):
    idle = rss_kib(gw.pid)
    body = prompt_body(size, "words")
    statuses = []

    def one():
        statuses.append(request(gw.proxy, "POST", "/v1/chat/completions", body)[0])

    with RssSampler(gw.pid) as rss:
        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    done = time.time()
    time.sleep(max(0.0, done + waits[0] - time.time()))
    after5 = rss_kib(gw.pid)
    time.sleep(max(0.0, done + waits[1] - time.time()))
    after30 = rss_kib(gw.pid)
    return idle, rss.peak, after5, after30, statuses


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def prompt_table(binary, unit):
    # One worker thread: a request that holds its worker shows in the concurrent GETs' latency.
    gw = Gateway(binary, threads=1)
    try:
        request(gw.proxy, "POST", "/v1/chat/completions", prompt_body(2048, "words"))
        print("One proxy worker thread (`--threads 1`), prompts one at a time:\n")
        print("| prompt | gateway CPU | peak RSS | slowest concurrent `GET /v1/models` (count) | status |")
        print("|---|---|---|---|---|")
        for size, kind in [(unit, "piece"), (unit, "words"), (10 * unit, "piece"), (10 * unit, "words")]:
            cpu, peak, slowest, count, status = one_prompt(gw, size, kind)
            name = f"{size / MIB:g} MiB, {'one word, no space' if kind == 'piece' else 'words'}"
            print(f"| {name} | {cpu:,.0f} ms | {mib(peak)} | {slowest:,.1f} ms ({count}) | {status} |",
                  flush=True)
    finally:
        gw.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the leaky-tokens binary to measure")
    ap.add_argument("--label", default=None, help="a name for the tables (default: the binary path)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run of this script: 64 KiB and 640 KiB prompts, 2 s / 3 s after")
    ap.add_argument("--spike-only", action="store_true", help="only the memory table")
    args = ap.parse_args()
    label = args.label or args.bin
    unit = MIB // 16 if args.quick else MIB

    binary = os.path.abspath(args.bin)
    print(f"### {label}\n")
    if not args.spike_only:
        prompt_table(binary, unit)
    # A fresh process with the shipped config (two worker threads) for the spike.
    gw = Gateway(binary)
    try:
        request(gw.proxy, "POST", "/v1/chat/completions", prompt_body(2048, "words"))
        time.sleep(2)
        waits = (2, 3) if args.quick else (5, 30)
        idle, peak, after5, after30, statuses = spike(gw, 8, 10 * unit, waits)
        print(f"\nShipped config (two worker threads), fresh process, 8 concurrent {10 * unit / MIB:g} MiB "
              f"prompts (words):\n")
        print(f"| idle RSS | peak during | {waits[0]} s after | {waits[1]} s after | statuses |")
        print("|---|---|---|---|---|")
        codes = ", ".join(f"{c}×{statuses.count(c)}" for c in sorted(set(statuses)))
        print(f"| {mib(idle)} | {mib(peak)} | {mib(after5)} | {mib(after30)} | {codes} |\n", flush=True)
    finally:
        gw.stop()


if __name__ == "__main__":
    main()
