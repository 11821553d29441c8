"""One-shot set-up jobs of docker-compose.yml, the steps `scripts/stack up` runs between services.

    stack_init.py payments-webhook  register the control plane's webhook endpoint at the payment stub
                                    (or reuse the one there) and write its signing secret to
                                    $LEAKY_INIT_DIR/webhook-secret for the control plane (dev profile)
    stack_init.py prepaid-tier      PUT /v1/tiers/prepaid on the control plane (the tier
                                    config/stack.yaml's balance policy matches; idempotent)

Standard library only: it runs in a stock python image. Secrets are read from files
(LEAKY_*_FILE), never printed.
"""

import json
import os
import sys
import time
import urllib.request

TIMEOUT_S = 120


def secret(name, default=""):
    path = os.environ.get(name + "_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    return os.environ.get(name, default)


def call(method, url, token=None, body=None):
    """JSON request; returns the decoded answer (HTTPError raises)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_ready(url):
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"stack_init: {url} not ready after {TIMEOUT_S} s")
        time.sleep(1)


def payments_webhook():
    payments = os.environ.get("LEAKY_PAYMENTS_URL", "http://stubs:18004")
    endpoint = os.environ.get("LEAKY_WEBHOOK_URL", "http://control-plane:9300/v1/webhooks/payments")
    api_key = secret("LEAKY_PAYMENTS_API_KEY")
    wait_ready(payments + "/healthz")
    state = call("GET", payments + "/_stub/state")
    known = [e for e in state.get("webhook_endpoints", []) if e.get("url") == endpoint]
    if known:
        value = known[-1]["secret"]
    else:
        created = call(
            "POST",
            payments + "/v1/webhook_endpoints",
            token=api_key,
            body={"url": endpoint, "enabled_events": ["*"]},
        )
        value = created["secret"]
    out_dir = os.environ.get("LEAKY_INIT_DIR", "/run/leaky-init")
    path = os.path.join(out_dir, "webhook-secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)
    # The control plane runs as the image's non-root user (uid 10001); the job runs as root.
    if os.geteuid() == 0:
        os.chown(path, 10001, 10001)
    print(f"stack_init: webhook endpoint {endpoint} registered; secret in {path}")


def prepaid_tier():
    cp = os.environ.get("LEAKY_CONTROL_PLANE_URL", "http://control-plane:9300")
    wait_ready(cp + "/readyz")
    limits = {
        "requests_per_minute": 600,
        "tokens_per_minute": 2000000,
        "priority": "normal",
        "description": "prepaid tokens; 600 requests/min, 2,000,000 tokens/min",
    }
    call("PUT", cp + "/v1/tiers/prepaid", token=secret("LEAKY_ADMIN_TOKEN"), body={"limits": limits})
    print("stack_init: tier prepaid is in place")


JOBS = {"payments-webhook": payments_webhook, "prepaid-tier": prepaid_tier}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in JOBS:
        sys.exit("usage: stack_init.py " + "|".join(JOBS))
    JOBS[sys.argv[1]]()
