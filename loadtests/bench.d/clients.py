"""Load clients the runner starts on CPU 1 (taskset) where oha and wrk cannot measure what we need.

  python clients.py sse URL PAYLOAD KEY STREAMS OUT.json
      STREAMS concurrent SSE chat completions; per-stream time to first event and the gaps between
      consecutive `data:` events (as they arrive at the client), every stream must end with [DONE].
  python clients.py accuracy URL KEYS_FILE PER_KEY OUT.json
      For each key in KEYS_FILE (one `plaintext tier` a line) send PER_KEY requests back to back (keys in
      parallel); count 200 / 429 per key and the time between a key's first and last request.
  python clients.py once URL KEY_PREFIX N CONNS PAYLOAD OUT.json
      One request for each key KEY_PREFIX000000 .. KEY_PREFIX<N-1> (six digits), over CONNS keep-alive
      connections, then stop; count statuses. (wrk cannot end a run when the work is done: its main thread
      sleeps out the whole `-d`, so a run sized for the slowest case idled for minutes.)

Plain asyncio protocols over HTTP/1.1 keep the client's own cost per event small (uvloop when
installed), so the gaps measured are the server's, not Python's.
"""

import asyncio
import json
import sys
import time

try:
    import uvloop  # type: ignore

    uvloop.install()
except ImportError:  # pragma: no cover
    pass


def split_url(url):
    assert url.startswith("http://"), url
    rest = url[len("http://"):]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path


def request_bytes(host, port, path, key, body):
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class SseProto(asyncio.Protocol):
    def __init__(self, done):
        self.done = done
        self.t0 = None
        self.head = b""
        self.status = None
        self.events = []  # arrival times of `data:` events
        self.buf = b""
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        now = time.perf_counter()
        if self.status is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                self.finish()
                return
        # A 5-byte carry finds markers split across reads and never holds a whole one (6 bytes).
        window = self.buf + data
        n = window.count(b"data: ")
        if n:
            self.events.extend([now] * n)
        if b"[DONE]" in window:
            self.finished = True
            self.finish()
            return
        self.buf = window[-5:]

    def finish(self):
        if not self.done.done():
            self.done.set_result(True)
        self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(False)


async def one_stream(host, port, req, results, start_gate):
    loop = asyncio.get_running_loop()
    await start_gate.wait()
    done = loop.create_future()
    t0 = time.perf_counter()
    try:
        _, proto = await loop.create_connection(lambda: SseProto(done), host, port)
        proto.transport.write(req)
        await asyncio.wait_for(done, 120)
    except Exception as e:  # noqa: BLE001
        results.append({"error": repr(e)})
        return
    ev = proto.events
    results.append({
        "status": proto.status,
        "done": proto.finished,
        "ttft": (ev[0] - t0) if ev else None,
        "gaps": [b - a for a, b in zip(ev, ev[1:])],
        "events": len(ev),
        "t0": t0,
        "end": ev[-1] if ev else None,
    })


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


async def sse_main(url, payload, key, streams, out):
    host, port, path = split_url(url)
    req = request_bytes(host, port, path, key, open(payload, "rb").read().strip())
    results = []
    gate = asyncio.Event()
    tasks = [asyncio.create_task(one_stream(host, port, req, results, gate)) for _ in range(streams)]
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    bad = [r for r in results if "error" in r or r["status"] != 200 or not r["done"]]
    gaps = [g for r in results if "gaps" in r for g in r["gaps"]]
    ttft = [r["ttft"] for r in results if r.get("ttft") is not None]
    summary = {
        "streams": streams, "ok": streams - len(bad), "failed": len(bad),
        "failures": [r.get("error") or f"status {r.get('status')} done {r.get('done')}" for r in bad[:5]],
        "events": sum(r.get("events", 0) for r in results), "wall_s": wall,
        "gap_p50_ms": (pct(gaps, 50) or 0) * 1e3, "gap_p99_ms": (pct(gaps, 99) or 0) * 1e3,
        "gap_p999_ms": (pct(gaps, 99.9) or 0) * 1e3, "gap_max_ms": (max(gaps) if gaps else 0) * 1e3,
        "ttft_p50_ms": (pct(ttft, 50) or 0) * 1e3, "ttft_p99_ms": (pct(ttft, 99) or 0) * 1e3,
    }
    json.dump(summary, open(out, "w"), indent=1)


class Conn:
    """One keep-alive HTTP/1.1 connection for sequential non-streaming requests."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)

    async def post(self, req):
        self.w.write(req)
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                length = -1
        if length > 0:
            await self.r.readexactly(length)
        elif length < 0:
            while True:
                size = int((await self.r.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.r.readexactly(size + 2)
                if size == 0:
                    break
        return status


async def drive_key(host, port, path, key, body, per_key, out, sem):
    async with sem:
        c = Conn(host, port)
        await c.open()
        req = request_bytes(host, port, path, key, body)
        counts = {}
        t_first = time.monotonic()
        t_last = t_first
        for _ in range(per_key):
            t_last = time.monotonic()
            s = await c.post(req)
            counts[s] = counts.get(s, 0) + 1
        c.w.close()
        out[key] = {"counts": counts, "elapsed_s": t_last - t_first}


async def accuracy_main(url, keys_file, per_key, out_path, payload):
    host, port, path = split_url(url)
    body = open(payload, "rb").read().strip()
    keys = [l.split()[0] for l in open(keys_file) if l.strip()]
    out = {}
    sem = asyncio.Semaphore(64)
    t0 = time.monotonic()
    await asyncio.gather(*(drive_key(host, port, path, k, body, per_key, out, sem) for k in keys))
    json.dump({"keys": out, "wall_s": time.monotonic() - t0}, open(out_path, "w"))


async def once_main(url, prefix, n, conns, payload, out_path):
    host, port, path = split_url(url)
    body = open(payload, "rb").read().strip()
    counts = {}
    next_key = iter(range(n))

    async def worker():
        c = Conn(host, port)
        await c.open()
        for i in next_key:  # one shared iterator: each key exactly once across the workers
            s = await c.post(request_bytes(host, port, path, f"{prefix}{i:06d}", body))
            counts[s] = counts.get(s, 0) + 1
        c.w.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    wall = time.monotonic() - t0
    json.dump({"n": sum(counts.values()), "counts": {str(k): v for k, v in counts.items()},
               "wall_s": wall, "rps": sum(counts.values()) / wall}, open(out_path, "w"))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "sse":
        asyncio.run(sse_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]))
    elif cmd == "accuracy":
        asyncio.run(accuracy_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]))
    elif cmd == "once":
        asyncio.run(once_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]))
    else:
        sys.exit(f"unknown command {cmd}")
