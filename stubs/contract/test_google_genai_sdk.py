"""The official `google-genai` SDK against the Gemini stub."""
import pytest
from google import genai
from google.genai import errors, types

MODEL = "gemini-2.0-flash"
FORCE = {"x-stub-completion-tokens": "11"}


# Google serves the native API under /v1beta and /v1; with a custom base URL and an API key the SDK
# uses GOOGLE_AI_API_DEFAULT_VERSION ("v1", google/genai/_api_client.py) unless told otherwise.
@pytest.fixture(params=["v1beta", None], ids=["v1beta", "sdk-default"])
def make(stubs, request, monkeypatch):
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)
    version = request.param

    def client(key="k", headers=None):
        opts = {"base_url": stubs["gemini"], "headers": headers or {}}
        if version:
            opts["api_version"] = version
        return genai.Client(api_key=key, http_options=types.HttpOptions(**opts))

    client.version = version or "v1"
    return client


def test_the_sdk_calls_the_version_under_test(make):
    c = make()  # kept referenced: the SDK closes its HTTP client when the Client is collected
    r = c.models.generate_content(model=MODEL, contents="hi")
    saw = r.sdk_http_response.headers["x-stub-saw-path"]
    assert saw == f"/{make.version}/models/{MODEL}:generateContent"


def test_generate_stream_and_count_tokens_agree(make):
    c = make(headers=FORCE)
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


def test_embed_and_models(make):
    c = make()
    e = c.models.embed_content(model="text-embedding-004", contents="hello world")
    assert len(e.embeddings[0].values) == 768
    names = [m.name for m in c.models.list()]
    assert any(MODEL in n for n in names)


def test_errors(make):
    # Keep each client referenced: the SDK closes its HTTP client when the Client is collected.
    throttled = make(headers={"x-stub-fault": "status=429"})
    with pytest.raises(errors.ClientError) as e:
        throttled.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    overloaded = make(headers={"x-stub-fault": "status=503"})
    with pytest.raises(errors.ServerError) as e:
        overloaded.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 503 and e.value.status == "UNAVAILABLE"
    bad = make(key="invalid-key")
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model=MODEL, contents="hi")
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
