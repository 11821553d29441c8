"""The official `openai` SDK against the gateway's response cache, memory and Redis stores.

A hit must be indistinguishable to the SDK from the live answer it replays: same completion (the
stub mints a fresh `chatcmpl-` id per live answer, so an equal id proves the replay), same usage,
and for a stream the same chunks, parsed by the SDK's own SSE decoder. The stub's request counter
proves a hit made no upstream call. Before repeating a request, a test waits until the live answer
is written (`Gateway.wait_stored`): the gateway stores it after its last byte reached the client.
"""
import uuid

import pytest
from openai import OpenAI

from conftest import KEYS, PREFIX, upstream_calls

MODEL = "gpt-4o-mini"


def client(gateway, store, key="acme"):
    return OpenAI(base_url=f"{gateway.url}{PREFIX[store]}/v1", api_key=KEYS[key], max_retries=0)


def messages():
    """A question no other test asks, so every test starts from a miss."""
    return [{"role": "user", "content": f"Tell me about foxes ({uuid.uuid4()})."}]


def create(c, **kw):
    """(parsed completion or stream, response headers)."""
    raw = c.chat.completions.with_raw_response.create(model=MODEL, temperature=0, **kw)
    return raw.parse(), raw.headers


def drain(c, **kw):
    """A streaming request read to its end by the SDK: (chunks, headers)."""
    stream, headers = create(c, stream=True, **kw)
    return list(stream), headers


def live(gateway, store, fn, c, **kw):
    """`fn(c, **kw)` answered live, returned once the gateway has stored the answer."""
    before = gateway.stored(store)
    got = fn(c, **kw)
    assert got[1]["x-leaky-cache"] == "miss"
    gateway.wait_stored(store, before + 1)
    return got


def text_of(chunks):
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_a_non_streaming_hit_returns_the_same_completion(gateway, stubs, store):
    c, msgs = client(gateway, store), messages()
    first, _ = live(gateway, store, create, c, messages=msgs)
    calls = upstream_calls(stubs["openai"])
    hit, h = create(c, messages=msgs)
    assert h["x-leaky-cache"] == "hit"
    assert upstream_calls(stubs["openai"]) == calls, "a hit must not reach the provider"
    assert int(h["age"]) >= 0
    assert hit.id == first.id and hit.id.startswith("chatcmpl-")
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert hit.choices[0].finish_reason == first.choices[0].finish_reason == "stop"
    assert hit.usage.model_dump() == first.usage.model_dump()


def test_a_streaming_replay_parses_and_matches_the_live_stream_with_its_usage(gateway, stubs, store):
    c, msgs = client(gateway, store), messages()
    opts = {"messages": msgs, "stream_options": {"include_usage": True}}
    first, _ = live(gateway, store, drain, c, **opts)
    calls = upstream_calls(stubs["openai"])
    replay, h = drain(c, **opts)
    assert h["x-leaky-cache"] == "hit"
    assert h["content-type"].startswith("text/event-stream")
    assert upstream_calls(stubs["openai"]) == calls, "a hit must not reach the provider"
    assert text_of(replay) == text_of(first) != ""
    assert [ch.model_dump() for ch in replay] == [ch.model_dump() for ch in first]
    # The final usage chunk: no choices, the live stream's usage.
    assert replay[-1].choices == [] and replay[-1].usage is not None
    assert replay[-1].usage.model_dump() == first[-1].usage.model_dump()
    assert replay[-1].usage.completion_tokens > 0
    assert all(ch.usage is None for ch in replay[:-1])


def test_a_streaming_replay_without_include_usage_has_no_usage_chunk(gateway, store):
    c, msgs = client(gateway, store), messages()
    first, _ = live(gateway, store, drain, c, messages=msgs)
    replay, h = drain(c, messages=msgs)
    assert h["x-leaky-cache"] == "hit"
    assert text_of(replay) == text_of(first) != ""
    assert [ch.model_dump() for ch in replay] == [ch.model_dump() for ch in first]
    assert all(ch.choices and ch.usage is None for ch in replay), "a usage chunk nobody asked for"
    assert replay[-1].choices[0].finish_reason == "stop"


def test_a_streaming_and_a_plain_request_do_not_share_an_answer(gateway, store):
    c, msgs = client(gateway, store), messages()
    plain, _ = live(gateway, store, create, c, messages=msgs)
    chunks, h = drain(c, messages=msgs)
    assert h["x-leaky-cache"] == "miss", "a stream must not be answered with a stored JSON body"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].id != plain.id


def test_two_orgs_never_share_an_answer_and_one_orgs_keys_do(gateway, stubs, store):
    msgs = messages()
    acme, _ = live(gateway, store, create, client(gateway, store, "acme"), messages=msgs)
    calls = upstream_calls(stubs["openai"])
    globex, _ = live(gateway, store, create, client(gateway, store, "globex"), messages=msgs)
    assert upstream_calls(stubs["openai"]) == calls + 1, "the other org's request went upstream"
    assert globex.id != acme.id
    # The routes' scope is `org`: another key of acme is served acme's answer, globex its own.
    acme2, h3 = create(client(gateway, store, "acme2"), messages=msgs)
    again, h4 = create(client(gateway, store, "globex"), messages=msgs)
    assert (h3["x-leaky-cache"], h4["x-leaky-cache"]) == ("hit", "hit")
    assert (acme2.id, again.id) == (acme.id, globex.id)


@pytest.mark.parametrize("headers, stores", [
    ({"Cache-Control": "no-store"}, False),
    ({"x-leaky-cache": "bypass"}, False),
], ids=["no-store", "opt-out-header"])
def test_the_callers_opt_outs_neither_read_nor_store(gateway, store, headers, stores):
    c, msgs = client(gateway, store), messages()
    first, _ = live(gateway, store, create, c, messages=msgs)
    before = gateway.stored(store)
    a, h1 = create(c, messages=msgs, extra_headers=headers)
    assert h1["x-leaky-cache"] == "bypass" and a.id != first.id, "an opt-out must not read"
    b, h2 = create(c, messages=msgs)
    assert h2["x-leaky-cache"] == "hit" and b.id == first.id, "an opt-out must not replace the entry"
    assert gateway.stored(store) == before


def test_no_cache_skips_the_read_and_stores_the_fresh_answer(gateway, store):
    c, msgs = client(gateway, store), messages()
    first, _ = live(gateway, store, create, c, messages=msgs)
    before = gateway.stored(store)
    fresh, h = create(c, messages=msgs, extra_headers={"Cache-Control": "no-cache"})
    assert h["x-leaky-cache"] == "miss" and fresh.id != first.id
    gateway.wait_stored(store, before + 1)
    hit, h = create(c, messages=msgs)
    assert h["x-leaky-cache"] == "hit" and hit.id == fresh.id


def test_a_sampled_request_is_not_cached_under_temperature_never(gateway, store):
    c, msgs = client(gateway, store), messages()
    ids = set()
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0.7)
        assert raw.headers["x-leaky-cache"] == "bypass"
        ids.add(raw.parse().id)
    assert len(ids) == 2
