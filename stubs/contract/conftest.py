"""Starts `leaky-tokens stubs --latency off` on free loopback ports for the SDK contract tests."""
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port, proc):
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"leaky-tokens stubs exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"port {port} never opened")


@pytest.fixture(scope="session")
def stubs():
    binary = Path(os.environ.get("LEAKY_TOKENS_BIN", ROOT / "target/debug/leaky-tokens"))
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `cargo test` (or `cargo build`) at the repo root first", pytrace=False)
    ports = {name: _free_port() for name in ("openai", "gemini", "qwen")}
    proc = subprocess.Popen(
        [str(binary), "--log", "warn", "stubs", "--latency", "off",
         "--openai-listen", f"127.0.0.1:{ports['openai']}",
         "--gemini-listen", f"127.0.0.1:{ports['gemini']}",
         "--qwen-listen", f"127.0.0.1:{ports['qwen']}"],
        cwd=ROOT,
    )
    try:
        for p in ports.values():
            _wait(p, proc)
        yield {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
