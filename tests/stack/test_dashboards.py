"""Every Grafana panel shows data (issue 17): real traffic through both proxies of the stack (answers,
429s from a free-tier key's 20 requests/min, a request the upstream refuses), then every panel query
of observability/grafana/dashboards/ (variables on "All") and every variable's label_values selector
runs against the stack's Prometheus (127.0.0.1:19090) once it has scraped that traffic twice. A query
that errors or returns no series fails the test, named by dashboard and panel.
`scripts/test` brings the stack up (Prometheus included), runs this file, and stops it.
"""
import calendar
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observability"))
from grafana_queries import queries, variable_queries  # noqa: E402

CP = os.environ.get("LEAKY_CP_URL", "http://127.0.0.1:9300")
PROM = os.environ.get("LEAKY_PROMETHEUS_URL", "http://127.0.0.1:19090")
TOKEN = os.environ.get("LEAKY_ADMIN_TOKEN", "lt-dev-admin")
PROXIES = ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 60.0
MODELS = ["gpt-4o-mini", "qwen-max", "gemini-2.0-flash"]


def api(method, path, **kw):
    r = httpx.request(method, f"{CP}{path}", headers=ADMIN, timeout=10, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


def until(predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {TIMEOUT}s")


def chat(proxy, key, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "dashboards"}], **extra}
    return httpx.post(
        f"{proxy}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).status_code


def prom(path, **params):
    r = httpx.get(f"{PROM}{path}", params=params, timeout=10)
    return r.status_code, r.json()


def scraped_since(t):
    """True once every target's last scrape started after `t` (a Unix time) and succeeded."""
    _, body = prom("/api/v1/targets")
    targets = body["data"]["activeTargets"]
    assert targets, body
    # Whole seconds (RFC 3339 in UTC): a scrape in the same second as `t` waits for the next one.
    stamps = [calendar.timegm(time.strptime(x["lastScrape"][:19], "%Y-%m-%dT%H:%M:%S")) for x in targets]
    return all(x["health"] == "up" for x in targets) and min(stamps) > t


def traffic():
    org = api("POST", "/v1/orgs", json={"name": f"dashboards-{os.getpid()}-{time.time_ns()}"})
    pro = api("POST", f"/v1/orgs/{org['id']}/keys", json={"name": "pro", "tier": "pro"})["key"]
    free = api("POST", f"/v1/orgs/{org['id']}/keys", json={"name": "free", "tier": "free"})["key"]
    for proxy in PROXIES:
        until(lambda: chat(proxy, pro, "gpt-4o-mini") == 200, f"the new key on {proxy}")
        for model in MODELS:
            assert chat(proxy, pro, model) == 200
    # 20 requests/min for the free tier, shared by both proxies through Redis: 30 at once (the bucket
    # would refill between sequential ones at the stub's realistic latency) leave some 429s.
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(lambda i: chat(PROXIES[i % 2], free, "gpt-4o-mini"), range(30)))
    assert 429 in statuses, statuses
    # An upstream that refuses the request (the stub's 400 for an impossible temperature).
    assert chat(PROXIES[0], pro, "gpt-4o-mini", temperature=7) >= 400


def test_every_panel_and_variable_returns_data_after_real_traffic():
    traffic()
    sent = time.time()
    # Two scrapes after the traffic (and a rule evaluation between them, at the same 5 s interval).
    until(lambda: scraped_since(sent), "a scrape of every target after the traffic")
    second = time.time()
    until(lambda: scraped_since(second), "a second scrape of every target")

    failures, checked = [], 0
    for name, title, expr in queries():
        checked += 1
        status, body = prom("/api/v1/query", query=expr)
        if status != 200 or body.get("status") != "success":
            failures.append(f"{name} / {title}: invalid: {expr}: {body.get('error')}")
        elif not body["data"]["result"]:
            failures.append(f"{name} / {title}: no data: {expr}")
    for name, var, selector, label in variable_queries():
        checked += 1
        status, body = prom(f"/api/v1/label/{label}/values", **{"match[]": selector})
        if status != 200 or not body.get("data"):
            failures.append(f"{name} / ${var}: no values of {label} on {selector}")
    assert not failures, f"{len(failures)} of {checked} queries failed:\n" + "\n".join(failures)
    assert checked > 60, checked
