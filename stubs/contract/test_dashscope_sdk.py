"""The official `dashscope` SDK against the Qwen stub (native API)."""
import dashscope
import pytest
from dashscope import Generation, TextEmbedding

MSGS = [{"role": "user", "content": "Tell me something about foxes."}]


@pytest.fixture(autouse=True)
def base_url(stubs):
    dashscope.base_http_api_url = stubs["qwen"] + "/api/v1"
    yield


def test_generation_formats_and_streaming():
    t = Generation.call(model="qwen-plus", prompt="Tell me something about foxes.", api_key="k",
                        result_format="text", headers={"x-stub-completion-tokens": "8"})
    assert t.status_code == 200 and t.output.text and t.usage.output_tokens == 8
    m = Generation.call(model="qwen-plus", messages=MSGS, api_key="k", result_format="message",
                        headers={"x-stub-completion-tokens": "8"})
    assert m.status_code == 200 and m.output.choices[0].message.content
    assert m.usage.input_tokens > 0 and m.usage.output_tokens == 8
    again = Generation.call(model="qwen-plus", messages=MSGS, api_key="k", result_format="message")
    assert again.usage.input_tokens == m.usage.input_tokens
    parts = list(Generation.call(model="qwen-plus", messages=MSGS, api_key="k", result_format="message",
                                 stream=True, incremental_output=True,
                                 headers={"x-stub-completion-tokens": "8"}))
    assert all(p.status_code == 200 for p in parts)
    text = "".join(p.output.choices[0].message.content for p in parts)
    assert text == m.output.choices[0].message.content
    assert parts[-1].usage.output_tokens == 8 and parts[-1].usage.input_tokens == m.usage.input_tokens


def test_text_embedding():
    r = TextEmbedding.call(model="text-embedding-v3", input=["hello", "world"], api_key="k")
    assert r.status_code == 200
    assert len(r.output["embeddings"]) == 2 and len(r.output["embeddings"][0]["embedding"]) == 1024
    assert r.usage["total_tokens"] > 0


def test_errors():
    # dashscope reports HTTP errors in the response object rather than raising.
    r = Generation.call(model="qwen-plus", messages=MSGS, api_key="k", result_format="message",
                        headers={"x-stub-fault": "status=429"})
    assert r.status_code == 429 and r.code == "Throttling"
    r = Generation.call(model="qwen-plus", messages=MSGS, api_key="invalid-key", result_format="message")
    assert r.status_code == 401 and r.code == "InvalidApiKey"
