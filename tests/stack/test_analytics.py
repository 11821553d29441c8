"""Usage analytics through the whole stack (issue 16): requests through both proxies with the official
OpenAI SDK → usage events on Kafka → the analytics role → Cassandra → the control plane's
`GET /v1/orgs/{org}/usage`. The totals per org, per model and per day equal the sums of the usage the
provider reported to the SDK, exactly; the response has DESIGN.md's full-stack shape.
`scripts/test` brings the stack up, runs this file, and stops it.
"""
import datetime
import os
import time

import httpx
import openai

CP = os.environ.get("LEAKY_CP_URL", "http://127.0.0.1:9300")
TOKEN = os.environ.get("LEAKY_ADMIN_TOKEN", "lt-dev-admin")
PROXIES = ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1"]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 30.0  # seconds: key propagation, then events through Kafka into Cassandra's rollups
MODELS = ["gpt-4o-mini", "qwen-max", "gemini-2.0-flash"]


def api(method, path, **kw):
    r = httpx.request(method, f"{CP}{path}", headers=ADMIN, timeout=10, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


def chat(base_url, key, model):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"count for {model}"}]
    )


def until(predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {TIMEOUT}s")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def record(reported, model, r):
    s = reported.setdefault(model, [0, 0, 0, 0])
    s[0] += r.usage.prompt_tokens
    s[1] += r.usage.completion_tokens
    s[2] += r.usage.total_tokens
    s[3] += 1


def test_usage_totals_equal_what_the_provider_reported():
    org = api("POST", "/v1/orgs", json={"name": f"analytics-{os.getpid()}-{time.time_ns()}"})
    key = api("POST", f"/v1/orgs/{org['id']}/keys", json={"name": "app", "tier": "pro"})["key"]
    reported = {}  # model -> [prompt, completion, total, requests], as the SDK got them

    def works():
        # Refused attempts (the key not there yet) are not the org's: they carry no org.
        try:
            record(reported, MODELS[0], chat(PROXIES[0], key, MODELS[0]))
            return True
        except openai.AuthenticationError:
            return False

    until(works, "the new key works")
    for i in range(12):
        model = MODELS[i % 3]
        record(reported, model, chat(PROXIES[i % 2], key, model))
    sent = sum(s[3] for s in reported.values())

    now = datetime.datetime.now(datetime.timezone.utc)
    window = {
        "from": iso(now - datetime.timedelta(days=1)),
        "to": iso(now + datetime.timedelta(hours=1)),
        "granularity": "day",
    }

    def by_model():
        body = api("GET", f"/v1/orgs/{org['id']}/usage", params={**window, "group_by": "model"})
        out = {}
        for p in body["series"]:
            s = out.setdefault(p["group"], [0, 0, 0, 0])
            for i, f in enumerate(["prompt_tokens", "completion_tokens", "total_tokens", "requests"]):
                s[i] += p[f]
        return out if sum(s[3] for s in out.values()) >= sent else None

    assert until(by_model, "usage events reach the usage API") == reported

    # The ungrouped daily report: DESIGN.md's shape, the same totals.
    plain = api("GET", f"/v1/orgs/{org['id']}/usage", params=window)
    for field in ["requests", "prompt_tokens", "completion_tokens", "total_tokens"]:
        assert isinstance(plain["total"][field], int), field
        assert all(isinstance(p[field], int) and "start" in p for p in plain["series"]), field
    assert plain["total"]["requests"] == sent
    assert plain["total"]["total_tokens"] == sum(s[2] for s in reported.values())
