"""The official `google-genai` SDK against the gateway's response cache on a Gemini-native route
(`generateContent` and `streamGenerateContent?alt=sse`), memory and Redis stores.

The stub mints a fresh `responseId` per live answer, so an equal id proves the replay. Clients stay
referenced while used: the SDK closes its HTTP client when a `Client` is collected.
"""
import uuid

from google import genai
from google.genai import types

from conftest import KEYS, PREFIX, upstream_calls

MODEL = "gemini-2.0-flash"
GREEDY = types.GenerateContentConfig(temperature=0)


def client(gateway, store, key="acme"):
    return genai.Client(api_key=KEYS[key], http_options=types.HttpOptions(
        base_url=f"{gateway.url}{PREFIX[store]}/gemini", api_version="v1beta"))


def prompt():
    return f"Tell me about foxes ({uuid.uuid4()})."


def cache_header(response):
    return response.sdk_http_response.headers["x-leaky-cache"]


def generate(gateway, store, c, p):
    """A live `generateContent`, returned once the gateway has stored it."""
    before = gateway.stored(store)
    r = c.models.generate_content(model=MODEL, contents=p, config=GREEDY)
    assert cache_header(r) == "miss"
    gateway.wait_stored(store, before + 1)
    return r


def test_a_generate_content_hit_returns_the_same_answer(gateway, stubs, store):
    c, p = client(gateway, store), prompt()
    first = generate(gateway, store, c, p)
    calls = upstream_calls(stubs["gemini"])
    hit = c.models.generate_content(model=MODEL, contents=p, config=GREEDY)
    assert cache_header(hit) == "hit"
    assert upstream_calls(stubs["gemini"]) == calls, "a hit must not reach the provider"
    assert hit.response_id == first.response_id and hit.text == first.text != ""
    assert hit.usage_metadata.model_dump() == first.usage_metadata.model_dump()


def test_a_generate_content_stream_replay_parses_and_matches(gateway, stubs, store):
    c, p = client(gateway, store), prompt()
    before = gateway.stored(store)
    first = list(c.models.generate_content_stream(model=MODEL, contents=p, config=GREEDY))
    assert cache_header(first[0]) == "miss"
    gateway.wait_stored(store, before + 1)
    calls = upstream_calls(stubs["gemini"])
    replay = list(c.models.generate_content_stream(model=MODEL, contents=p, config=GREEDY))
    assert cache_header(replay[0]) == "hit"
    assert upstream_calls(stubs["gemini"]) == calls, "a hit must not reach the provider"
    assert len(replay) == len(first) > 1
    assert "".join(ch.text or "" for ch in replay) == "".join(ch.text or "" for ch in first) != ""
    assert [ch.response_id for ch in replay] == [ch.response_id for ch in first]
    assert replay[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert replay[-1].usage_metadata.model_dump() == first[-1].usage_metadata.model_dump()
    assert replay[-1].usage_metadata.candidates_token_count > 0


def test_two_orgs_never_share_a_gemini_answer(gateway, stubs, store):
    p, a, g = prompt(), client(gateway, store, "acme"), client(gateway, store, "globex")
    acme = generate(gateway, store, a, p)
    calls = upstream_calls(stubs["gemini"])
    globex = generate(gateway, store, g, p)
    assert upstream_calls(stubs["gemini"]) == calls + 1, "the other org's request went upstream"
    assert globex.response_id != acme.response_id
    again = g.models.generate_content(model=MODEL, contents=p, config=GREEDY)
    assert cache_header(again) == "hit" and again.response_id == globex.response_id
