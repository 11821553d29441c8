"""The official `openai` SDK against the gateway's response cache, memory and Redis stores.

A hit must be indistinguishable to the SDK from the live answer it replays: same completion (the
stub mints a fresh `chatcmpl-` id per live answer, so an equal id proves the replay), same usage,
and for a stream the same chunks, parsed by the SDK's own SSE decoder. The stub's request counter
proves a hit made no upstream call.
"""
import uuid

import pytest
from openai import OpenAI

from conftest import KEYS, PREFIX, upstream_calls

MODEL = "gpt-4o-mini"


def client(gateway, store, key="acme"):
    return OpenAI(base_url=f"{gateway}{PREFIX[store]}/v1", api_key=KEYS[key], max_retries=0)


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


def text_of(chunks):
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_a_non_streaming_hit_returns_the_same_completion(gateway, stubs, store):
    c, msgs = client(gateway, store), messages()
    live, h1 = create(c, messages=msgs)
    calls = upstream_calls(stubs["openai"])
    hit, h2 = create(c, messages=msgs)
    assert (h1["x-leaky-cache"], h2["x-leaky-cache"]) == ("miss", "hit")
    assert upstream_calls(stubs["openai"]) == calls, "a hit must not reach the provider"
    assert int(h2["age"]) >= 0
    assert hit.id == live.id and hit.id.startswith("chatcmpl-")
    assert hit.choices[0].message.content == live.choices[0].message.content
    assert hit.choices[0].finish_reason == live.choices[0].finish_reason == "stop"
    assert hit.usage.model_dump() == live.usage.model_dump()


def test_a_streaming_replay_parses_and_matches_the_live_stream_with_its_usage(gateway, stubs, store):
    c, msgs = client(gateway, store), messages()
    opts = {"messages": msgs, "stream_options": {"include_usage": True}}
    live, h1 = drain(c, **opts)
    calls = upstream_calls(stubs["openai"])
    replay, h2 = drain(c, **opts)
    assert (h1["x-leaky-cache"], h2["x-leaky-cache"]) == ("miss", "hit")
    assert h2["content-type"].startswith("text/event-stream")
    assert upstream_calls(stubs["openai"]) == calls, "a hit must not reach the provider"
    assert text_of(replay) == text_of(live) != ""
    assert [ch.id for ch in replay] == [ch.id for ch in live]
    assert [ch.model_dump() for ch in replay] == [ch.model_dump() for ch in live]
    # The final usage chunk: no choices, the live stream's usage.
    assert replay[-1].choices == [] and replay[-1].usage is not None
    assert replay[-1].usage.model_dump() == live[-1].usage.model_dump()
    assert replay[-1].usage.completion_tokens > 0
    assert all(ch.usage is None for ch in replay[:-1])


def test_a_streaming_replay_without_include_usage_has_no_usage_chunk(gateway, store):
    c, msgs = client(gateway, store), messages()
    live, h1 = drain(c, messages=msgs)
    replay, h2 = drain(c, messages=msgs)
    assert (h1["x-leaky-cache"], h2["x-leaky-cache"]) == ("miss", "hit")
    assert text_of(replay) == text_of(live) != ""
    assert [ch.model_dump() for ch in replay] == [ch.model_dump() for ch in live]
    assert all(ch.choices and ch.usage is None for ch in replay), "a usage chunk nobody asked for"
    assert replay[-1].choices[0].finish_reason == "stop"


def test_a_streaming_and_a_plain_request_do_not_share_an_answer(gateway, store):
    c, msgs = client(gateway, store), messages()
    live, _ = create(c, messages=msgs)
    chunks, h = drain(c, messages=msgs)
    assert h["x-leaky-cache"] == "miss", "a stream must not be answered with a stored JSON body"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].id != live.id


def test_two_orgs_never_share_an_answer_and_one_orgs_keys_do(gateway, stubs, store):
    msgs = messages()
    acme, h1 = create(client(gateway, store, "acme"), messages=msgs)
    calls = upstream_calls(stubs["openai"])
    globex, h2 = create(client(gateway, store, "globex"), messages=msgs)
    assert (h1["x-leaky-cache"], h2["x-leaky-cache"]) == ("miss", "miss")
    assert upstream_calls(stubs["openai"]) == calls + 1, "the other org's request went upstream"
    assert globex.id != acme.id
    # The routes' scope is `org`: another key of acme is served acme's answer, globex its own.
    acme2, h3 = create(client(gateway, store, "acme2"), messages=msgs)
    again, h4 = create(client(gateway, store, "globex"), messages=msgs)
    assert (h3["x-leaky-cache"], h4["x-leaky-cache"]) == ("hit", "hit")
    assert (acme2.id, again.id) == (acme.id, globex.id)


@pytest.mark.parametrize("headers, first, second", [
    ({"Cache-Control": "no-store"}, "bypass", "miss"),
    ({"x-leaky-cache": "bypass"}, "bypass", "miss"),
    ({"Cache-Control": "no-cache"}, "miss", "hit"),
], ids=["no-store", "opt-out-header", "no-cache"])
def test_the_callers_cache_headers(gateway, store, headers, first, second):
    """`no-store` and the opt-out header neither read nor store; `no-cache` skips the read but
    stores the fresh answer, so the plain request after it is a hit."""
    c, msgs = client(gateway, store), messages()
    a, h1 = create(c, messages=msgs, extra_headers=headers)
    b, h2 = create(c, messages=msgs)
    assert (h1["x-leaky-cache"], h2["x-leaky-cache"]) == (first, second)
    assert (b.id == a.id) == (second == "hit")


def test_a_sampled_request_is_not_cached_under_temperature_never(gateway, store):
    c, msgs = client(gateway, store), messages()
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0.7)
    assert raw.headers["x-leaky-cache"] == "bypass"
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, temperature=0.7)
    assert raw.headers["x-leaky-cache"] == "bypass"
