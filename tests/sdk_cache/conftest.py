"""Boots the real gateway for the response-cache SDK tests: the stubs (latency off), a throwaway
`redis-server`, and `leaky-tokens proxy` with a config whose routes cache in memory and in Redis.

One proxy serves both stores: `/v1` and `/gemini/v1beta` cache in this process's memory,
`/redis/v1` and `/redis/gemini/v1beta` in Redis (a route picks its own `store:`). Three API keys:
two of org `acme` (they share answers: the routes' scope is `org`) and one of org `globex`.
"""
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from procs import binary as _binary, free_port as _free_port, stop as _stop, wait_port as _wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"acme": "lt-cache-acme", "acme2": "lt-cache-acme-2", "globex": "lt-cache-globex"}
ORGS = {"acme": "acme", "acme2": "acme", "globex": "globex"}
# Route prefixes by store, for the OpenAI dialect and for Gemini native.
PREFIX = {"memory": "", "redis": "/redis"}


@pytest.fixture(scope="session")
def stubs():
    ports = {name: _free_port() for name in ("openai", "gemini", "qwen")}
    proc = subprocess.Popen(
        [str(_binary()), "--log", "warn", "stubs", "--latency", "off",
         "--openai-listen", f"127.0.0.1:{ports['openai']}",
         "--gemini-listen", f"127.0.0.1:{ports['gemini']}",
         "--qwen-listen", f"127.0.0.1:{ports['qwen']}",
         "--payment-listen", f"127.0.0.1:{_free_port()}"],
        cwd=ROOT,
    )
    try:
        for p in ports.values():
            _wait(p, proc, "leaky-tokens stubs")
        yield {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not on PATH (scripts/test installs it)", pytrace=False)
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _route(name, prefix, dialect, upstream, store):
    return f"""  - name: {name}
    prefix: {prefix}
    dialect: {dialect}
    upstream: {upstream}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}, {{ kind: rate-limit }}]
    cache: {{ store: {store}, ttl_seconds: 300, scope: org, temperature: never }}
"""


def gateway_config(stubs, redis_url, listen, admin):
    routes = ""
    for store, pre in PREFIX.items():
        routes += _route(f"v1-{store}", f"{pre}/v1", "openai", "{ provider: openai, path_prefix: /v1 }", store)
        routes += _route(f"gemini-{store}", f"{pre}/gemini/v1beta", "google",
                         "{ provider: gemini, path_prefix: /v1beta }", store)
    keys = "".join(
        f"  - {{ id: {name}, sha256: {hashlib.sha256(key.encode()).hexdigest()}, user: {name}-user, "
        f"org: {ORGS[name]}, tier: test }}\n" for name, key in KEYS.items())
    return f"""server:
  listen: {listen}
  admin_listen: {admin}
  threads: 1
providers:
  openai:
    base_url: {stubs['openai']}
    credential: sk-stub
    models: [gpt-4o-mini]
  gemini:
    base_url: {stubs['gemini']}
    auth: goog-api-key
    credential: stub-gemini-key
    models: [gemini-2.0-flash]
routes:
{routes}cache:
  store: memory
  memory: {{ max_bytes: 16777216 }}
  redis: {{ url: "{redis_url}", timeout_ms: 200 }}
limits:
  store: memory
tiers:
  test:
    limits:
      - {{ name: test-rpm, unit: requests, rate: 100000, per: minute }}
keys:
{keys}"""


class Gateway:
    """The running proxy: `url` (its listener) and its admin `/metrics`."""

    def __init__(self, url, admin):
        self.url, self.admin = url, admin

    def metric(self, series):
        """The value of one exact series, e.g. `leaky_cache_stored_total{store="redis"}` (0 if absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            return r.read().decode()

    def stored(self, store):
        """Answers written to `store` so far."""
        return self.metric(f'leaky_cache_stored_total{{store="{store}"}}')

    def wait_stored(self, store, count, secs=5.0):
        """Until `count` answers have been written to `store`. The gateway writes an answer after
        its last byte reached the client (off the request), so a caller that repeats a request at
        once may otherwise race the write; this waits on the write itself, never on a sleep."""
        end = time.monotonic() + secs
        while self.stored(store) < count:
            if time.monotonic() > end:
                cache = [m for m in self.metrics().splitlines() if m.startswith("leaky_cache_")]
                pytest.fail(f"{store}: {count} answers never stored in {secs} s; " + "\n".join(cache))
            time.sleep(0.005)


@pytest.fixture(scope="session")
def gateway(stubs, redis_url, tmp_path_factory):
    """The running proxy (a [`Gateway`])."""
    work = tmp_path_factory.mktemp("gateway")
    port, admin = _free_port(), _free_port()
    cfg = work / "cache.yaml"
    cfg.write_text(gateway_config(stubs, redis_url, f"127.0.0.1:{port}", f"127.0.0.1:{admin}"))
    log = open(work / "proxy.log", "w")
    proc = subprocess.Popen(
        [str(_binary()), "--log", "warn", "proxy", "--config", str(cfg),
         "--config-cache", str(work / "last-good.json")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait(port, proc, f"leaky-tokens proxy (log: {work / 'proxy.log'})")
        _prime_redis(f"http://127.0.0.1:{port}", redis_url)
        yield Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
    finally:
        _stop(proc)
        log.close()


def _redis_clients(redis_url):
    """`connected_clients` of the Redis at `redis_url` (this probe's own connection included)."""
    host, port = redis_url.removeprefix("redis://").split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
        data = b""
        while b"connected_clients:" not in data or not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("connected_clients:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no connected_clients in INFO clients: {data!r}")


def _prime_redis(base, redis_url):
    """The proxy's Redis store connects in the background on first use and answers `Unavailable`
    (a miss, nothing stored) until connected: by design a cold store never blocks a request. So the
    first request after start would race the connection; one cacheable request triggers it, then
    this waits (bounded) until the proxy's connection shows up in Redis."""
    body = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                       "messages": [{"role": "user", "content": f"prime {uuid.uuid4()}"}]}).encode()
    req = urllib.request.Request(f"{base}/redis/v1/chat/completions", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
    end = time.monotonic() + 10
    while _redis_clients(redis_url) < 2:
        if time.monotonic() > end:
            raise RuntimeError("the proxy never connected to the cache's Redis")
        time.sleep(0.01)


@pytest.fixture(params=list(PREFIX), ids=list(PREFIX))
def store(request):
    """Each test runs once per store: `memory`, then `redis`."""
    return request.param


def upstream_calls(stub_base):
    """Requests the stub has answered (all endpoints, all statuses): a hit adds none."""
    with urllib.request.urlopen(stub_base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("stub_requests_total{") and 'endpoint="/metrics"' not in line)
