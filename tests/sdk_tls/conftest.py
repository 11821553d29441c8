"""Boots the real gateway with TLS for the official OpenAI SDK: the stubs (latency off) and
`leaky-tokens proxy` whose listener speaks HTTPS with the dev CA's server certificate.

The certificates come from `scripts/dev-certs` (openssl, idempotent): into `$LEAKY_TLS_DIR` when
`scripts/test` made them, else into this session's temp directory. Nothing private is committed.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from procs import binary as _binary, free_port as _free_port, stop as _stop, wait_port as _wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "lt-tls-sdk"


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """The dev CA and server certificate: `{"ca": ..., "cert": ..., "key": ...}` (paths)."""
    target = os.environ.get("LEAKY_TLS_DIR") or str(tmp_path_factory.mktemp("tls"))
    out = subprocess.run([str(ROOT / "scripts/dev-certs"), target], check=True, capture_output=True,
                         text=True).stdout.split()
    names = {Path(p).name: p for p in out}
    return {"ca": names["ca.pem"], "cert": names["server.pem"], "key": names["server.key"]}


@pytest.fixture(scope="session")
def stubs():
    port = _free_port()
    proc = subprocess.Popen(
        [str(_binary()), "--log", "warn", "stubs", "--latency", "off",
         "--openai-listen", f"127.0.0.1:{port}",
         "--gemini-listen", f"127.0.0.1:{_free_port()}",
         "--qwen-listen", f"127.0.0.1:{_free_port()}",
         "--payment-listen", f"127.0.0.1:{_free_port()}"],
        cwd=ROOT,
    )
    try:
        _wait(port, proc, "leaky-tokens stubs")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def gateway_config(openai, certs, listen, admin):
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""server:
  listen: {listen}
  admin_listen: {admin}
  threads: 1
  tls:
    cert: {certs['cert']}
    key: {certs['key']}
providers:
  openai:
    base_url: {openai}
    credential: sk-stub
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
tiers:
  test: {{}}
keys:
  - {{ id: sdk, sha256: {digest}, user: sdk-user, org: acme, tier: test }}
"""


@pytest.fixture(scope="session")
def gateway(stubs, certs, tmp_path_factory):
    """The proxy's HTTPS base URL for the SDK (`https://localhost:<port>/v1`)."""
    work = tmp_path_factory.mktemp("gateway")
    port, admin = _free_port(), _free_port()
    cfg = work / "tls.yaml"
    cfg.write_text(gateway_config(stubs, certs, f"127.0.0.1:{port}", f"127.0.0.1:{admin}"))
    log = open(work / "proxy.log", "w")
    proc = subprocess.Popen([str(_binary()), "--log", "warn", "proxy", "--config", str(cfg)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(port, proc, f"leaky-tokens proxy (log: {work / 'proxy.log'})")
        yield f"https://localhost:{port}/v1"
    finally:
        _stop(proc)
        log.close()
