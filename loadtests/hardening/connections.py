#!/usr/bin/env python3
"""Connection hardening figures (issue #11, point 9) for one gateway binary.

Starts `BIN up --latency off` (the quickstart: stubs + proxy, config/dev.yaml) on free loopback ports
and measures, on raw sockets:

  slowloris   how long a connection sending its head 1 byte every --trickle seconds stays open
              (capped at --slowloris-cap), and what it receives;
  idle        how long an idle keep-alive connection (after one answered request) stays open
              (capped at --idle-cap);
  big header  what a request with a ~1 MiB header block gets;
  flood       with --sockets idle connections held open (by helper processes of 9,000 each, so no
              process of the script runs out of descriptors), how many the proxy keeps, whether a
              connection opened before the flood, a new proxy connection and the admin /healthz
              still answer, and how fast.

Python 3 standard library only. Usage (from anywhere):

  loadtests/hardening/connections.py --bin target/debug/leaky-tokens
  loadtests/hardening/connections.py --bin /work/baseline-bin/leaky-tokens --sockets 20000
"""

import argparse
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEY = "lt-demo-pro"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(path="/v1/models", extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n{extra}\r\n").encode()


def read_response(sock, timeout):
    """(status or None, seconds) for one Content-Length response; None on close/timeout."""
    sock.settimeout(timeout)
    start = time.monotonic()
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None, time.monotonic() - start
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head.split(b" ")[1]), time.monotonic() - start
    except (socket.timeout, ConnectionError, OSError):
        return None, time.monotonic() - start


def open_until_closed(sock, cap):
    """Seconds until the server closes `sock` (None if still open after `cap`) and what it sent."""
    start = time.monotonic()
    got = b""
    while True:
        left = cap - (time.monotonic() - start)
        if left <= 0:
            return None, got
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None, got
        except OSError:
            return time.monotonic() - start, got
        if not chunk:
            return time.monotonic() - start, got
        got += chunk


def status_line(data):
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "(nothing)"


def slowloris(proxy, trickle, cap, out):
    s = socket.create_connection(proxy)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    stop = threading.Event()

    def drip():
        while not stop.wait(trickle):
            try:
                s.send(b"a")
            except OSError:
                return

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    closed, got = open_until_closed(s, cap)
    stop.set()
    s.close()
    out["slowloris"] = (
        f"closed after {closed:.1f} s, received {status_line(got)!r}"
        if closed is not None
        else f"still open after {cap:.0f} s (cap), received {status_line(got)!r}"
    )


def idle(proxy, cap, out):
    s = socket.create_connection(proxy)
    s.sendall(request())
    status, _ = read_response(s, 10)
    closed, got = open_until_closed(s, cap)
    s.close()
    out["idle keep-alive"] = (
        f"first request {status}; closed after {closed:.1f} s idle"
        if closed is not None
        else f"first request {status}; still open after {cap:.0f} s idle (cap)"
    )


def big_header(proxy, out):
    s = socket.create_connection(proxy)
    filler = "a" * (1024 * 1024 - 1024)
    start = time.monotonic()
    try:
        s.sendall(request(extra=f"X-Big: {filler}\r\n"))
    except OSError as e:
        out["1 MiB header"] = f"send failed: {e}"
        return
    status, _ = read_response(s, 30)
    s.close()
    out["1 MiB header"] = f"status {status} after {time.monotonic() - start:.2f} s"


def probe(addr, path, key=True):
    """(status, ms) of one request on a new connection; status None if refused/unanswered."""
    start = time.monotonic()
    try:
        s = socket.create_connection(addr, timeout=5)
    except OSError as e:
        return f"connect failed ({e.__class__.__name__})", (time.monotonic() - start) * 1000
    try:
        s.sendall(request(path) if key else f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, _ = read_response(s, 5)
    except OSError as e:
        status = f"error ({e.__class__.__name__})"
    s.close()
    return status, (time.monotonic() - start) * 1000


def hold(proxy, n, conn):
    """Child process: open `n` idle connections, report, then report what the server closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, failed = [], 0
    for _ in range(min(n, hard - 64)):
        try:
            socks.append(socket.create_connection(proxy, timeout=2))
        except OSError:
            failed += 1
    conn.send((len(socks), failed))
    conn.recv()  # measure now
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    answered = {fd for fd, _ in poller.poll(0)}
    refused_503 = 0
    for s in socks:
        if s.fileno() in answered:
            s.settimeout(0.5)
            try:
                refused_503 += s.recv(64).startswith(b"HTTP/1.1 503")
            except OSError:
                pass
    conn.send((len(socks) - len(answered), len(answered), refused_503))
    conn.recv()  # release
    for s in socks:
        s.close()


def flood(proxy, admin, n, out):
    """`n` idle connections from helper processes (each under its own RLIMIT_NOFILE), plus one held
    here that sends a request once the flood is in place."""
    import multiprocessing

    per = 9000
    workers = []
    start = time.monotonic()
    # A client already served once (a kept-alive connection): does it still get answers?
    mine = socket.create_connection(proxy, timeout=5)
    mine.sendall(request())
    read_response(mine, 5)
    for i in range(0, n, per):
        parent, child = multiprocessing.Pipe()
        p = multiprocessing.Process(target=hold, args=(proxy, min(per, n - i), child), daemon=True)
        p.start()
        workers.append((p, parent))
    opened = [w.recv() for _, w in workers]
    took = time.monotonic() - start
    time.sleep(2)  # let the server accept (or refuse) the backlog
    for _, w in workers:
        w.send("measure")
    counts = [w.recv() for _, w in workers]
    kept, closed, refused = (sum(c[i] for c in counts) for i in range(3))
    try:
        mine.sendall(request())
        st, secs = read_response(mine, 5)
        held = f"{st} in {secs * 1000:.0f} ms"
    except OSError as e:
        held = f"error ({e.__class__.__name__})"
    new_proxy = probe(proxy, "/v1/models")
    health = probe(admin, "/healthz", key=False)
    out[f"flood ({n} idle sockets)"] = (
        f"opened {sum(o[0] for o in opened)} in {took:.1f} s ({sum(o[1] for o in opened)} connects "
        f"failed); the server still holds {kept}, closed {closed} ({refused} with a 503)\n"
        f"    a kept-alive connection from before the flood: {held}\n"
        f"    new proxy connection: {new_proxy[0]} in {new_proxy[1]:.0f} ms\n"
        f"    admin /healthz: {health[0]} in {health[1]:.0f} ms"
    )
    for p, w in workers:
        w.send("release")
        p.join(10)
    mine.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the leaky-tokens binary")
    ap.add_argument("--config", default=os.path.join(REPO, "config", "dev.yaml"))
    ap.add_argument("--trickle", type=float, default=2.0, help="seconds between slowloris bytes")
    ap.add_argument("--slowloris-cap", type=float, default=40.0)
    ap.add_argument("--idle-cap", type=float, default=90.0)
    ap.add_argument("--sockets", type=int, default=20000)
    args = ap.parse_args()

    ports = {k: free_port() for k in ("proxy", "admin", "openai", "gemini", "qwen")}
    env = dict(os.environ)
    env.update(
        OPENAI_BASE_URL=f"http://127.0.0.1:{ports['openai']}",
        GEMINI_BASE_URL=f"http://127.0.0.1:{ports['gemini']}",
        DASHSCOPE_BASE_URL=f"http://127.0.0.1:{ports['qwen']}",
        LEAKY_LOG="warn",
    )
    log = tempfile.NamedTemporaryFile(prefix="connections-", suffix=".log", delete=False)
    cmd = [
        args.bin, "up", "--latency", "off", "--config", args.config,
        "--listen", f"127.0.0.1:{ports['proxy']}", "--admin-listen", f"127.0.0.1:{ports['admin']}",
        "--openai-listen", f"127.0.0.1:{ports['openai']}",
        "--gemini-listen", f"127.0.0.1:{ports['gemini']}",
        "--qwen-listen", f"127.0.0.1:{ports['qwen']}",
    ]
    gw = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proxy, admin = ("127.0.0.1", ports["proxy"]), ("127.0.0.1", ports["admin"])
    try:
        deadline = time.monotonic() + 60
        while probe(admin, "/healthz", key=False)[0] != 200 or probe(proxy, "/v1/models")[0] != 200:
            if gw.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the gateway did not come up; log: {log.name}")
            time.sleep(0.2)
        print(f"binary: {args.bin}\nconfig: {args.config}")
        out = {}
        threads = [
            threading.Thread(target=slowloris, args=(proxy, args.trickle, args.slowloris_cap, out)),
            threading.Thread(target=idle, args=(proxy, args.idle_cap, out)),
            threading.Thread(target=big_header, args=(proxy, out)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flood(proxy, admin, args.sockets, out)
        for k in ("slowloris", "idle keep-alive", "1 MiB header"):
            print(f"  {k:16} {out.get(k)}")
        for k, v in out.items():
            if k.startswith("flood"):
                print(f"  {k}: {v}")
        print(f"  gateway still running: {gw.poll() is None}; log: {log.name}")
    finally:
        gw.kill()
        gw.wait()


if __name__ == "__main__":
    main()
