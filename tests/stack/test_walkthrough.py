"""The README's walkthrough against a running `scripts/stack up`, with the official OpenAI SDK.

A key created through the control plane's API works on both proxies within a second, streaming too;
rotated, both keys work during the grace period; revoked, both proxies refuse it within a second.
`scripts/test` brings the stack up (debug binary, its own state dir), runs this file, and stops it.
"""
import os
import time

import json

import httpx
import openai
import pytest
from confluent_kafka import Consumer

CP = os.environ.get("LEAKY_CP_URL", "http://127.0.0.1:9300")
TOKEN = os.environ.get("LEAKY_ADMIN_TOKEN", "lt-dev-admin")
PROXIES = ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1"]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROPAGATION = 1.0  # seconds: the full-stack contract
KAFKA = os.environ.get("LEAKY_KAFKA", "127.0.0.1:19092")


def api(method, path, **kw):
    r = httpx.request(method, f"{CP}{path}", headers=ADMIN, timeout=10, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


def chat(base_url, key, **kw):
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **kw
    )


def until(predicate, what):
    """Polls `predicate` until it holds; returns how long that took. Fails after PROPAGATION."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > PROPAGATION:
            pytest.fail(f"{what}: not within {PROPAGATION}s")
        time.sleep(0.02)


def works(base_url, key):
    try:
        return chat(base_url, key).usage.total_tokens > 0
    except openai.AuthenticationError:
        return False


def refused(base_url, key):
    try:
        chat(base_url, key)
        return False
    except openai.AuthenticationError:
        return True


@pytest.fixture(scope="module")
def org():
    return api("POST", "/v1/orgs", json={"name": f"walkthrough-{os.getpid()}-{time.time_ns()}"})


def test_a_key_from_the_api_works_everywhere_and_revocation_reaches_every_proxy(org):
    issued = api("POST", f"/v1/orgs/{org['id']}/keys", json={"name": "app", "tier": "pro"})
    key = issued["key"]
    assert key.startswith("lt-")
    for proxy in PROXIES:
        until(lambda: works(proxy, key), f"new key on {proxy}")

    # Streaming through the SDK, usage reported in the final chunk.
    client = openai.OpenAI(base_url=PROXIES[1], api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count to three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    # Rotation: the new key works at once on both; the old one still works (grace period).
    rotated = api("POST", f"/v1/keys/{issued['id']}/rotate")
    new_key = rotated["key"]
    for proxy in PROXIES:
        until(lambda: works(proxy, new_key), f"rotated key on {proxy}")
        assert works(proxy, key), "the old key works during the grace period"

    # Revocation reaches both proxies within a second.
    api("DELETE", f"/v1/keys/{rotated['id']}")
    for proxy in PROXIES:
        until(lambda: refused(proxy, new_key), f"revoked key on {proxy}")

    # The control plane's outbox relay published the key's life on leaky.tenancy.v1, in order.
    def life(key_id, n):
        found = consume("leaky.tenancy.v1", lambda e: e["subject"] == key_id, lambda f: len(f) >= n)
        assert all(e["_key"] == key_id for e in found), "keyed by aggregate"
        return [e["type"] for e in found]

    assert life(issued["id"], 2) == ["key.created", "key.rotated"]
    assert life(rotated["id"], 1) == ["key.revoked"]

    # Both proxies published the key's usage to Kafka (leaky.usage.v1, keyed by org, CloudEvents).
    events = usage_events(org["id"], issued["id"], want_sources=2)
    assert {e["source"].rsplit(":", 1)[-1] for e in events} == {"8080", "8081"}
    for e in events:
        assert e["specversion"] == "1.0" and e["type"] == "leaky.usage.v1"
        d = e["data"]
        assert d["org"] == org["id"] and d["model"] == "gpt-4o-mini" and d["status"] == 200
        assert d["total_tokens"] == d["prompt_tokens"] + d["completion_tokens"] > 0
        assert d["usage_source"] in ("reported", "counted")


def consume(topic, wanted, done):
    """Events of `topic` (from the start) for which `wanted(event, key)` holds, once `done(found)`."""
    consumer = Consumer({
        "bootstrap.servers": KAFKA,
        "group.id": f"walkthrough-{time.time_ns()}",
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    found, deadline = [], time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = json.loads(msg.value())
            event["_key"] = msg.key().decode() if msg.key() else None
            if wanted(event):
                found.append(event)
                if done(found):
                    return found
    finally:
        consumer.close()
    pytest.fail(f"{topic}: got {found}")


def usage_events(org_id, key_id, want_sources):
    """The usage events of `key_id` on the stack's Kafka, once both proxies' have arrived (10 s)."""
    events = consume(
        "leaky.usage.v1",
        lambda e: e["data"].get("key_id") == key_id,
        lambda found: len({e["source"] for e in found}) >= want_sources,
    )
    assert all(e["_key"] == org_id for e in events), "keyed by org"
    return events


def test_every_proxy_acknowledged_the_version_in_force():
    def in_sync():
        status = api("GET", "/v1/config/status")
        acked = {i["instance"]: i["acked_version"] for i in status["instances"]}
        return all(acked.get(p) == status["version"] for p in ("proxy-8080", "proxy-8081"))

    start = time.monotonic()
    while not in_sync():
        assert time.monotonic() - start < 5, api("GET", "/v1/config/status")
        time.sleep(0.05)
    instances = api("GET", "/v1/registry/instances")["items"]
    proxies = {i["id"] for i in instances if i["role"] == "proxy" and i["status"] == "up"}
    assert {"proxy-8080", "proxy-8081"} <= proxies, instances
