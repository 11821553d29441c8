#!/usr/bin/env python3
"""Issue #11, point 1: is a non-streaming request whose client leaves early charged what the provider
generated?

    python3 loadtests/hardening/metering.py --bin target/debug/leaky-tokens [--requests 10] [--tokens 9000]

Starts `BIN up --latency off` (the gateway and the provider stubs in one process) with the shipped
`config/dev.yaml` on free loopback ports (the providers' base URLs are pointed at the stubs' ports
through OPENAI_BASE_URL, GEMINI_BASE_URL and DASHSCOPE_BASE_URL), then, with the free-tier demo key
`lt-demo-free` (10,000 tokens/min), sends REQUESTS non-streaming chat requests, one after the other,
that ask the stub for a TOKENS-token answer (`x-stub-completion-tokens`) and close the connection right
after the request is written, before any response byte. After each one it waits until the gateway has
logged the request (access log), so the next one sees the previous settlement.

Reports, from the gateway's own records and the stub's metrics:
  - what the upstream generated: `stub_completion_tokens_total` of the OpenAI stub (delta),
  - what the gateway charged: the usage records (target `usage`) and `leaky_tokens_total`,
  - the answers the gateway gave (access log statuses) and whether `free-tpm` refused any
    (`leaky_ratelimit_decisions_total{policy="free-tpm",decision="denied"}`): did the limit bite?

Stdlib only. Exit status 0 whenever the measurement ran (it measures, it does not judge).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "lt-demo-free"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(text, name, labels):
    """Sum of the samples of `name` whose labels include every `k="v"` of `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def log_records(path):
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_for(what, check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.05)
    print(f"warning: {what} not seen within {timeout} s", file=sys.stderr)
    return False


def send_and_leave(proxy, rid, tokens):
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Write a very long essay about leaky buckets."}],
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{proxy}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"x-request-id: {rid}\r\nx-stub-completion-tokens: {tokens}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    s = socket.create_connection(("127.0.0.1", proxy))
    s.sendall(head + body)
    s.close()  # gone before the response header


def stub_knob_config(binary, base, tmp):
    """The config to run. Gateways that forward an allow-list of headers (issue #11, point 6) pass
    the stub's `x-stub-completion-tokens` only where a config allows it: an overlay of `base` that
    allows it on the OpenAI provider. Older gateways forward every header and do not know the
    setting, so they get `base` itself (`check-config` tells the two apart)."""
    overlay = os.path.join(tmp, "metering.yaml")
    with open(overlay, "w") as f:
        f.write(f"extends: {os.path.relpath(os.path.abspath(base), tmp)}\n"
                "providers:\n  openai:\n    forward_headers: [x-stub-completion-tokens]\n")
    ok = subprocess.run([binary, "check-config", overlay], capture_output=True).returncode == 0
    return overlay if ok else base


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--bin", required=True, help="a leaky-tokens binary")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=9000, help="completion tokens the stub generates")
    ap.add_argument("--config", default=os.path.join(ROOT, "config", "dev.yaml"))
    args = ap.parse_args()

    proxy, admin, o, g, q = (free_port() for _ in range(5))
    logdir = tempfile.mkdtemp(prefix="lt-metering-")
    config = stub_knob_config(args.bin, args.config, logdir)
    log_path = os.path.join(logdir, "gateway.log")
    env = dict(
        os.environ,
        OPENAI_BASE_URL=f"http://127.0.0.1:{o}",
        GEMINI_BASE_URL=f"http://127.0.0.1:{g}",
        DASHSCOPE_BASE_URL=f"http://127.0.0.1:{q}",
        LEAKY_LOG="info",
    )
    cmd = [
        args.bin, "--log-format", "json", "up", "--config", config,
        "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
        "--openai-listen", f"127.0.0.1:{o}", "--gemini-listen", f"127.0.0.1:{g}",
        "--qwen-listen", f"127.0.0.1:{q}", "--latency", "off",
    ]
    with open(log_path, "w") as log:
        gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env)
    try:
        def ready():
            try:
                get(f"http://127.0.0.1:{admin}/readyz")
                get(f"http://127.0.0.1:{o}/healthz")
                return True
            except OSError:
                return gw.poll() is not None
        wait_for("the gateway", ready, 30)
        if gw.poll() is not None:
            sys.exit(f"the gateway exited; log: {log_path}")
        stub_url = f"http://127.0.0.1:{o}/metrics"
        gen0 = metric(get(stub_url), "stub_completion_tokens_total", {})
        started = time.time()
        for i in range(args.requests):
            rid = f"metering-probe-{os.getpid()}-{i}"
            send_and_leave(proxy, rid, args.tokens)
            wait_for(
                f"request {rid} in the access log",
                lambda: any(r.get("request_id") == rid and r.get("message") == "request"
                            for r in log_records(log_path)),
                60,
            )
        elapsed = time.time() - started
        time.sleep(0.3)  # the usage sink drains every 50 ms
        gen = metric(get(stub_url), "stub_completion_tokens_total", {}) - gen0
        m = get(f"http://127.0.0.1:{admin}/metrics")
        records = log_records(log_path)
        ours = [r for r in records if str(r.get("request_id", "")).startswith(f"metering-probe-{os.getpid()}-")]
        access = [r for r in ours if r.get("message") == "request"]
        usage = [r for r in ours if r.get("message") == "usage"]
        statuses = {}
        for r in access:
            statuses[r.get("status")] = statuses.get(r.get("status"), 0) + 1
        sources = {}
        for r in usage:
            sources[r.get("source")] = sources.get(r.get("source"), 0) + 1
        prompt = sum(int(r.get("prompt_tokens", 0)) for r in usage)
        completion = sum(int(r.get("completion_tokens", 0)) for r in usage)
        denied = metric(m, "leaky_ratelimit_decisions_total", {"policy": "free-tpm", "decision": "denied"})
        tokens_metric = metric(m, "leaky_tokens_total", {"kind": "completion"})

        print(f"binary:                 {args.bin}")
        print(f"requests:               {args.requests} non-streaming, {args.tokens} completion tokens asked, "
              f"client gone before the header ({elapsed:.1f} s)")
        print(f"gateway statuses:       {dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))} "
              f"(access log; the client saw none of them)")
        print(f"upstream generated:     {int(gen)} completion tokens (stub_completion_tokens_total)")
        print(f"gateway charged:        {prompt} prompt + {completion} completion = {prompt + completion} tokens "
              f"(usage records, sources {sources}); leaky_tokens_total{{kind=completion}} {int(tokens_metric)}")
        ratio = completion / gen if gen else float("nan")
        print(f"charged / generated:    {ratio:.2f} (completion tokens)")
        print(f"free-tpm (10,000/min):  {int(denied)} requests refused -> the limit "
              f"{'bit' if denied > 0 else 'never bit'}")
    finally:
        gw.terminate()
        try:
            gw.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gw.kill()


if __name__ == "__main__":
    main()
