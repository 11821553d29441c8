"""The official `openai` SDK against the OpenAI stub and both OpenAI-compatible layers."""
import json

import openai
import pytest
from openai import OpenAI

MSGS = [{"role": "user", "content": "Tell me something about foxes."}]
FORCE = {"x-stub-completion-tokens": "9"}
# The stub's own o200k count for MSGS, pinned by a Rust test in stubs/src/tokens.rs
# (contract_test_message_costs_fourteen_prompt_tokens).
MSGS_PROMPT_TOKENS = 14


@pytest.fixture
def client(stubs):
    return OpenAI(base_url=stubs["openai"] + "/v1", api_key="sk-test", max_retries=0)


def test_chat_plain_and_streaming_usage_agree(client):
    a = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, extra_headers=FORCE)
    b = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, extra_headers=FORCE)
    assert a.object == "chat.completion" and a.id.startswith("chatcmpl-")
    assert a.choices[0].message.role == "assistant" and a.choices[0].finish_reason == "stop"
    assert a.usage.completion_tokens == 9
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == MSGS_PROMPT_TOKENS
    assert a.usage.total_tokens == a.usage.prompt_tokens + 9
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, stream_options={"include_usage": True},
        extra_headers=FORCE)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == a.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == a.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == 9
    # One content delta per token.
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 9


def test_chat_tools_json_mode_and_n(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = client.chat.completions.create(model="gpt-4o", messages=MSGS, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    r = client.chat.completions.create(model="gpt-4o", messages=MSGS, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = client.chat.completions.create(model="gpt-4o", messages=MSGS, n=3, extra_headers=FORCE)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 27


def test_completions_embeddings_models(client):
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=5)
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"
    f = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "second"],
                                 encoding_format="float")
    b = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "second"])  # SDK default: base64
    assert len(f.data) == 2 and len(f.data[0].embedding) == 1536
    assert b.data[0].embedding == pytest.approx(f.data[0].embedding, abs=1e-6)
    assert f.usage.prompt_tokens == b.usage.prompt_tokens == f.usage.total_tokens
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o" in ids
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_responses_plain_and_streaming(client):
    r = client.responses.create(model="gpt-4o-mini", input="Tell me about foxes.", extra_headers=FORCE)
    assert r.object == "response" and r.status == "completed"
    assert r.output_text and r.usage.output_tokens == 9
    assert r.usage.total_tokens == r.usage.input_tokens + 9
    events = list(client.responses.create(model="gpt-4o-mini", input="Tell me about foxes.",
                                          stream=True, extra_headers=FORCE))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == r.output_text
    assert events[-1].response.usage.input_tokens == r.usage.input_tokens


def test_errors_are_sdk_exceptions(client, stubs):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSGS, extra_headers={"x-stub-fault": "status=429"})
    assert e.value.response.headers["x-ratelimit-remaining-requests"] is not None
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, extra_headers={"x-stub-fault": "status=503"})
    bad = OpenAI(base_url=stubs["openai"] + "/v1", api_key="invalid-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o", messages=MSGS)


@pytest.mark.parametrize("layer,model,embed", [
    ("gemini", "gemini-2.0-flash", "text-embedding-004"),
    ("qwen", "qwen-plus", "text-embedding-v3"),
])
def test_compatibility_layers(stubs, layer, model, embed):
    base = stubs[layer] + ("/v1beta/openai/" if layer == "gemini" else "/compatible-mode/v1/")
    c = OpenAI(base_url=base, api_key="k", max_retries=0)
    a = c.chat.completions.create(model=model, messages=MSGS, extra_headers=FORCE)
    assert a.usage.completion_tokens == 9
    chunks = list(c.chat.completions.create(model=model, messages=MSGS, stream=True,
                                            stream_options={"include_usage": True}, extra_headers=FORCE))
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == a.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == a.usage.prompt_tokens
    e = c.embeddings.create(model=embed, input="hello", encoding_format="float")
    assert len(e.data[0].embedding) > 0
    assert any(model in m.id for m in c.models.list())
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model=model, messages=MSGS, extra_headers={"x-stub-fault": "status=429"})
    bad = OpenAI(base_url=base, api_key="invalid-key", max_retries=0)
    # Gemini's layer answers a bad key with 400 INVALID_ARGUMENT, DashScope's with 401.
    expected = openai.BadRequestError if layer == "gemini" else openai.AuthenticationError
    with pytest.raises(expected):
        bad.chat.completions.create(model=model, messages=MSGS)
