"""Shared pieces of tests/observability: the repository's paths, free loopback ports, real Prometheus
and Alertmanager servers started through scripts/lib/prometheus.sh (the same functions scripts/stack
uses), and a local webhook receiver that records what Alertmanager posts."""
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
LIB = ROOT / "scripts" / "lib" / "prometheus.sh"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lib(call):
    """Runs `call` (a shell command line) with scripts/lib/prometheus.sh sourced."""
    r = subprocess.run(["bash", "-c", f'source "{LIB}" && {call}'], capture_output=True, text=True)
    assert r.returncode == 0, f"{call}: {r.stdout}{r.stderr}"
    return r.stdout


def until(predicate, what, timeout=60.0):
    """Polls `predicate` until it returns something truthy (which it returns) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


class Receiver:
    """A webhook receiver: every POST body (Alertmanager's webhook JSON), by path."""

    def __init__(self):
        self.posts = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path=None):
        """(path, status, labels) of every alert received (on `path` only, if given)."""
        with self.lock:
            posts = list(self.posts)
        return [
            (p, a["status"], a["labels"])
            for p, body in posts
            if path is None or p == path
            for a in body["alerts"]
        ]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def tools():
    """promtool, amtool and the servers, installed by the lib if missing (Debian packages)."""
    lib("prometheus_install")
