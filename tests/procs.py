"""Process plumbing shared by the Python suites that boot the real binary (`tests/sdk_cache`,
`tests/sdk_tls`): free loopback ports, waiting for a port, stopping a process, finding the binary."""
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    """Waits until `port` accepts connections; fails at once if `proc` exits first."""
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"{what}: port {port} never opened")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def binary():
    path = Path(os.environ.get("LEAKY_TOKENS_BIN", ROOT / "target/debug/leaky-tokens"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build` at the repo root first", pytrace=False)
    return path
