"""The official `google-genai` SDK against the Gemini stub."""
import pytest
from google import genai
from google.genai import errors, types

MODEL = "gemini-2.0-flash"
FORCE = {"x-stub-completion-tokens": "11"}


def make(stubs, key="k", headers=None):
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=stubs["gemini"], api_version="v1beta", headers=headers or {}))


def test_generate_stream_and_count_tokens_agree(stubs):
    c = make(stubs, headers=FORCE)
    prompt = "Tell me something about foxes."
    r = c.models.generate_content(model=MODEL, contents=prompt)
    assert r.text and r.candidates[0].finish_reason == types.FinishReason.STOP
    counted = c.models.count_tokens(model=MODEL, contents=prompt).total_tokens
    assert r.usage_metadata.prompt_token_count == counted
    assert r.usage_metadata.candidates_token_count == 11
    chunks = list(c.models.generate_content_stream(model=MODEL, contents=prompt))
    assert "".join(ch.text or "" for ch in chunks) == r.text
    assert chunks[-1].usage_metadata.candidates_token_count == 11
    assert chunks[-1].usage_metadata.prompt_token_count == counted


def test_embed_and_models(stubs):
    c = make(stubs)
    e = c.models.embed_content(model="text-embedding-004", contents="hello world")
    assert len(e.embeddings[0].values) == 768
    names = [m.name for m in c.models.list()]
    assert any(MODEL in n for n in names)


def test_errors(stubs):
    # Keep each client referenced: the SDK closes its HTTP client when the Client is collected.
    throttled = make(stubs, headers={"x-stub-fault": "status=429"})
    with pytest.raises(errors.ClientError) as e:
        throttled.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    overloaded = make(stubs, headers={"x-stub-fault": "status=503"})
    with pytest.raises(errors.ServerError) as e:
        overloaded.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
    bad = make(stubs, key="invalid-key")
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
