"""The official `google-genai` SDK against the gateway's response cache on a Gemini-native route
(`generateContent` and `streamGenerateContent?alt=sse`), memory and Redis stores.

The stub mints a fresh `responseId` per live answer, so an equal id proves the replay.
"""
import uuid

from google import genai
from google.genai import types

from conftest import KEYS, PREFIX, upstream_calls

MODEL = "gemini-2.0-flash"
GREEDY = types.GenerateContentConfig(temperature=0)


def client(gateway, store, key="acme"):
    return genai.Client(api_key=KEYS[key], http_options=types.HttpOptions(
        base_url=f"{gateway}{PREFIX[store]}/gemini", api_version="v1beta"))


def prompt():
    return f"Tell me about foxes ({uuid.uuid4()})."


def cache_header(response):
    return response.sdk_http_response.headers["x-leaky-cache"]


def test_a_generate_content_hit_returns_the_same_answer(gateway, stubs, store):
    c, p = client(gateway, store), prompt()
    live = c.models.generate_content(model=MODEL, contents=p, config=GREEDY)
    calls = upstream_calls(stubs["gemini"])
    hit = c.models.generate_content(model=MODEL, contents=p, config=GREEDY)
    assert (cache_header(live), cache_header(hit)) == ("miss", "hit")
    assert upstream_calls(stubs["gemini"]) == calls, "a hit must not reach the provider"
    assert hit.response_id == live.response_id and hit.text == live.text != ""
    assert hit.usage_metadata.model_dump() == live.usage_metadata.model_dump()


def test_a_generate_content_stream_replay_parses_and_matches(gateway, stubs, store):
    c, p = client(gateway, store), prompt()
    live = list(c.models.generate_content_stream(model=MODEL, contents=p, config=GREEDY))
    calls = upstream_calls(stubs["gemini"])
    replay = list(c.models.generate_content_stream(model=MODEL, contents=p, config=GREEDY))
    assert (cache_header(live[0]), cache_header(replay[0])) == ("miss", "hit")
    assert upstream_calls(stubs["gemini"]) == calls, "a hit must not reach the provider"
    assert len(replay) == len(live) > 1
    assert "".join(ch.text or "" for ch in replay) == "".join(ch.text or "" for ch in live) != ""
    assert [ch.response_id for ch in replay] == [ch.response_id for ch in live]
    assert replay[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert replay[-1].usage_metadata.model_dump() == live[-1].usage_metadata.model_dump()
    assert replay[-1].usage_metadata.candidates_token_count > 0


def test_two_orgs_never_share_a_gemini_answer(gateway, stubs, store):
    p = prompt()
    acme = client(gateway, store, "acme").models.generate_content(model=MODEL, contents=p, config=GREEDY)
    calls = upstream_calls(stubs["gemini"])
    globex = client(gateway, store, "globex").models.generate_content(model=MODEL, contents=p, config=GREEDY)
    assert (cache_header(acme), cache_header(globex)) == ("miss", "miss")
    assert upstream_calls(stubs["gemini"]) == calls + 1
    assert globex.response_id != acme.response_id
