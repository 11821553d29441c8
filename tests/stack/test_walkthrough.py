"""The README's walkthroughs against a running `scripts/stack up`, with the official OpenAI SDK.

A key created through the control plane's API works on both proxies within a second, streaming too;
rotated, both keys work during the grace period; revoked, both proxies refuse it within a second.
Prepaid tokens: a `prepaid` key is refused at a zero balance; a purchase completes; requests through
both proxies succeed until the tokens are spent, then are refused with `insufficient_quota`; the ledger
debits exactly what the provider reported; a declined payment is compensated and credits nothing.
`scripts/test` brings the stack up (debug binary, its own state dir), runs this file, and stops it.
"""
import json
import os
import time
import uuid

import httpx
import openai
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource

CP = os.environ.get("LEAKY_CP_URL", "http://127.0.0.1:9300")
TOKEN = os.environ.get("LEAKY_ADMIN_TOKEN", "lt-dev-admin")
PROXIES = ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1"]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROPAGATION = 1.0  # seconds: the full-stack contract
KAFKA = os.environ.get("LEAKY_KAFKA", "127.0.0.1:19092")
PAYMENTS = os.environ.get("LEAKY_PAYMENTS_URL", "http://127.0.0.1:18004")
SAGA_TIMEOUT = 30.0  # seconds: a purchase is four payment-stub calls at 80-300 ms plus the ledger
CONSUMER_TIMEOUT = 15.0  # seconds: usage events through Kafka to the ledger's usage consumer


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
    """Polls `predicate` until it holds; returns when the first check that held was sent. Fails when a
    check sent after PROPAGATION still does not hold. A check is a whole request through a stub that
    takes up to 2 s to generate: one sent before the change arrived and answered after the deadline
    says nothing about the change, so it does not end the wait."""
    start = time.monotonic()
    while True:
        sent = time.monotonic() - start
        if predicate():
            return sent
        if sent > PROPAGATION:
            pytest.fail(f"{what}: a request sent {sent:.2f}s after the change still saw the old state")
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


# --- Kafka topics (scripts/stack creates them; docs/events.md) ---------------------------------------

TOPICS = {  # name: (partitions, retention.ms)
    "leaky.usage.v1": (6, 7 * 86_400_000),
    "leaky.tenancy.v1": (3, 30 * 86_400_000),
    "leaky.ledger.v1": (3, 30 * 86_400_000),
    "leaky.billing.v1": (3, 30 * 86_400_000),
    "leaky.config.v1": (1, 30 * 86_400_000),
    "leaky.registry.v1": (1, 30 * 86_400_000),
    "leaky.notify.v1": (1, 30 * 86_400_000),
    "leaky.usage.v1.dlq": (1, 30 * 86_400_000),
}


def test_the_stack_created_every_topic_with_its_partitions_and_retention():
    admin = AdminClient({"bootstrap.servers": KAFKA})
    topics = admin.list_topics(timeout=10).topics
    for name, (partitions, retention) in TOPICS.items():
        assert name in topics, f"{name} missing: {sorted(topics)}"
        assert len(topics[name].partitions) == partitions, name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in TOPICS]
    for resource, future in admin.describe_configs(resources).items():
        configs = future.result(timeout=10)
        assert int(configs["retention.ms"].value) == TOPICS[resource.name][1], resource.name


# --- Prepaid tokens: buy, spend through both proxies, get refused ------------------------------------

MAX_TOKENS = 64  # per request: the reservation is the prompt estimate plus this cap


def prepaid_key(org_id):
    """A `prepaid` key of `org_id`, once both proxies know it (a zero balance refuses it, not 401)."""
    key = api("POST", f"/v1/orgs/{org_id}/keys", json={"name": "prepaid", "tier": "prepaid"})["key"]
    for proxy in PROXIES:
        until(lambda: out_of_tokens(proxy, key) is not None, f"prepaid key on {proxy}")
    return key


def out_of_tokens(base_url, key):
    """True when the proxy refuses `key` for its balance, None while it does not know the key yet."""
    try:
        chat(base_url, key, max_tokens=MAX_TOKENS)
        return False
    except openai.AuthenticationError:
        return None
    except openai.RateLimitError as e:
        assert e.code == "insufficient_quota", e
        return True


def buy(org_id, tokens, idempotency_key):
    r = httpx.post(
        f"{CP}/v1/orgs/{org_id}/purchases",
        headers={**ADMIN, "Idempotency-Key": idempotency_key},
        json={"tokens": tokens},
        timeout=10,
    )
    assert r.status_code in (200, 202), f"purchase: {r.status_code} {r.text}"
    return r


def finished(purchase_id):
    """The purchase once its saga has finished (completed, compensated or needs_attention)."""
    deadline = time.monotonic() + SAGA_TIMEOUT
    while True:
        purchase = api("GET", f"/v1/purchases/{purchase_id}")
        if purchase["status"] != "pending":
            return purchase
        assert time.monotonic() < deadline, f"purchase still pending after {SAGA_TIMEOUT}s: {purchase}"
        time.sleep(0.1)


def balance(org_id):
    return api("GET", f"/v1/orgs/{org_id}/balance")


def invariant(b):
    """The ledger's accounting invariant."""
    assert b["tokens"] == b["purchased"] + b["granted"] - b["consumed"] - b["refunded"] - b["expired"], b


def spend(key):
    """Chats through both proxies in turn until one is refused for the balance; the usage of each."""
    admitted = []
    for i in range(200):
        try:
            admitted.append(chat(PROXIES[i % 2], key, max_tokens=MAX_TOKENS).usage)
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota", e
            return admitted
    pytest.fail(f"never refused after {len(admitted)} requests")


def test_bought_tokens_are_spent_through_both_proxies_exactly_then_refused():
    org_id = api("POST", "/v1/orgs", json={"name": f"prepaid-{os.getpid()}-{time.time_ns()}"})["id"]
    key = prepaid_key(org_id)
    assert balance(org_id)["tokens"] == 0
    for proxy in PROXIES:
        assert out_of_tokens(proxy, key), f"{proxy} admitted a request at a zero balance"

    idempotency_key = f"walkthrough-{uuid.uuid4()}"
    first = buy(org_id, 600, idempotency_key)
    assert first.status_code == 202 and first.json()["status"] == "pending", first.text
    again = buy(org_id, 600, idempotency_key)
    assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"], "the same Idempotency-Key is the same purchase"

    purchase = finished(first.json()["id"])
    assert purchase["status"] == "completed", purchase
    b = balance(org_id)
    assert (b["purchased"], b["tokens"]) == (600, 600), b

    admitted = spend(key)
    assert len(admitted) >= 2, "both proxies served"
    for proxy in PROXIES:
        assert out_of_tokens(proxy, key), f"{proxy} still admits once the tokens are spent"

    # The usage consumer debits the ledger with exactly what the provider reported, once per request.
    spent = sum(u.total_tokens for u in admitted)
    deadline = time.monotonic() + CONSUMER_TIMEOUT
    while (b := balance(org_id))["consumed"] < spent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b["consumed"] == spent, (b, [u.total_tokens for u in admitted])
    assert b["purchased"] - b["consumed"] == b["tokens"], b
    invariant(b)
    # Refused because what is left is less than one more request's reservation.
    assert 0 <= b["tokens"] < MAX_TOKENS + max(u.prompt_tokens for u in admitted), b

    # The purchase and the ledger's entries were published as domain events (docs/events.md).
    life = consume("leaky.billing.v1", lambda e: e["subject"] == purchase["id"], lambda f: len(f) >= 2)
    assert [e["type"] for e in life] == ["purchase.created", "purchase.completed"]
    assert all(e["_key"] == purchase["id"] for e in life)
    assert life[1]["data"]["tokens"] == 600
    ledger = consume("leaky.ledger.v1", lambda e: e["subject"] == org_id, lambda f: len(f) >= 1 + len(admitted))
    assert [e["type"] for e in ledger] == ["ledger.credited"] + ["ledger.debited"] * len(admitted)


def test_a_declined_payment_is_compensated_and_leaves_the_balance_unchanged():
    org_id = api("POST", "/v1/orgs", json={"name": f"declined-{os.getpid()}-{time.time_ns()}"})["id"]
    paid = buy(org_id, 100, f"walkthrough-{uuid.uuid4()}").json()
    assert finished(paid["id"])["status"] == "completed"
    before = balance(org_id)
    assert before["purchased"] == 100, before

    # The control plane sends no x-stub-fault header: arm the stub to decline the next authorization.
    faults = httpx.post(f"{PAYMENTS}/_stub/faults", json={"decline": 1}, timeout=10)
    assert faults.status_code == 200, faults.text
    try:
        declined = buy(org_id, 500, f"walkthrough-{uuid.uuid4()}").json()
        purchase = finished(declined["id"])
    finally:
        httpx.post(f"{PAYMENTS}/_stub/faults", json={}, timeout=10)
    assert purchase["status"] == "compensated", purchase
    after = balance(org_id)
    assert {k: after[k] for k in ("tokens", "purchased", "refunded")} == {
        k: before[k] for k in ("tokens", "purchased", "refunded")
    }, (before, after)
    invariant(after)
    intents = httpx.get(f"{PAYMENTS}/_stub/state", timeout=10).json()["payment_intents"]
    mine = [pi for pi in intents if pi["id"] == purchase["payment_intent"]]
    assert all(pi["amount_received"] == 0 for pi in mine), mine
