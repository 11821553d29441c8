//! Non-stream JSON bodies: the provider's usage, exactly.

use super::*;
use serde_json::json;

fn json_usage(surface: Surface, body: serde_json::Value, estimate: u64) -> Usage {
    let bytes = body.to_string().into_bytes();
    let (out, u) = run(
        UsageTracker::new(surface, "m", false, false),
        &bytes,
        &[7, 100, 3],
        estimate,
    );
    assert_eq!(out, bytes, "JSON bodies pass unchanged");
    u
}

fn reported(p: u64, c: u64) -> Usage {
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        reported: true,
    }
}

#[test]
fn openai_shapes() {
    let chat = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "Why big joy."}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 12, "total_tokens": 26,
                  "prompt_tokens_details": {"cached_tokens": 0}}});
    assert_eq!(
        json_usage(Surface::ChatCompletions(Vendor::OpenAi), chat, 99),
        reported(14, 12)
    );
    let legacy = json!({"object": "text_completion", "choices": [{"text": "x", "index": 0}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18}});
    assert_eq!(
        json_usage(Surface::Completions(Vendor::OpenAi), legacy, 0),
        reported(2, 16)
    );
    let resp = json!({"object": "response", "status": "completed", "output": [{"type": "message",
        "content": [{"type": "output_text", "text": "hi"}]}],
        "usage": {"input_tokens": 11, "output_tokens": 5, "total_tokens": 16,
                  "output_tokens_details": {"reasoning_tokens": 0}}});
    assert_eq!(
        json_usage(Surface::Responses(Vendor::OpenAi), resp, 0),
        reported(11, 5)
    );
    let emb = json!({"object": "list", "data": [{"embedding": [0.1, -0.2]}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8}});
    assert_eq!(
        json_usage(Surface::Embeddings(Vendor::OpenAi), emb, 0),
        reported(8, 0)
    );
}

#[test]
fn gemini_shapes() {
    let gen = json!({"candidates": [{"content": {"parts": [{"text": "How her new."}], "role": "model"},
        "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20}});
    assert_eq!(json_usage(Surface::GeminiGenerate, gen, 0), reported(8, 12));
    let thinking = json!({"candidates": [], "usageMetadata": {"promptTokenCount": 8,
        "candidatesTokenCount": 12, "thoughtsTokenCount": 30, "totalTokenCount": 50}});
    assert_eq!(
        json_usage(Surface::GeminiGenerate, thinking, 0),
        reported(8, 42)
    );
    // A blocked prompt: usage without candidates is still what the provider says.
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}});
    assert_eq!(
        json_usage(Surface::GeminiGenerate, blocked, 0),
        reported(8, 0)
    );
    // embedContent reports no usage: the estimate, nothing generated.
    let emb = json!({"embedding": {"values": [0.1, 0.2]}});
    let u = json_usage(Surface::GeminiEmbed, emb, 6);
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 6,
            completion_tokens: 0,
            reported: false
        }
    );
    let count = json!({"totalTokens": 31});
    assert_eq!(
        json_usage(Surface::GeminiCountTokens, count, 31),
        Usage::default()
    );
}

#[test]
fn dashscope_shapes() {
    let text = json!({"output": {"text": "Hello.", "finish_reason": "stop"},
        "usage": {"input_tokens": 14, "output_tokens": 12, "total_tokens": 26}, "request_id": "r"});
    assert_eq!(
        json_usage(Surface::DashScopeGeneration, text, 0),
        reported(14, 12)
    );
    let msg = json!({"output": {"choices": [{"finish_reason": "length",
        "message": {"content": "Why big.", "role": "assistant"}}]},
        "usage": {"input_tokens": 14, "output_tokens": 12, "total_tokens": 26}});
    assert_eq!(
        json_usage(Surface::DashScopeGeneration, msg, 0),
        reported(14, 12)
    );
    let emb = json!({"output": {"embeddings": [{"text_index": 0, "embedding": [0.5]}]},
        "usage": {"total_tokens": 4}});
    assert_eq!(
        json_usage(Surface::DashScopeEmbedding, emb, 0),
        reported(4, 0)
    );
}

#[test]
fn error_and_garbage_bodies_fall_back_to_the_estimate() {
    let err = json!({"error": {"message": "bad", "type": "invalid_request_error"}});
    let u = json_usage(Surface::ChatCompletions(Vendor::OpenAi), err, 40);
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 40,
            completion_tokens: 0,
            reported: false
        }
    );
    let bytes = b"<html>502 Bad Gateway</html>".to_vec();
    let t = UsageTracker::new(Surface::GeminiGenerate, "g", false, false);
    let (_, u) = run(t, &bytes, &[5], 9);
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 9,
            completion_tokens: 0,
            reported: false
        }
    );
    // Usage that is not a usage object (floats) does not panic either.
    let odd = json!({"usage": {"prompt_tokens": 1.5}});
    let u = json_usage(Surface::ChatCompletions(Vendor::OpenAi), odd, 3);
    assert!(!u.reported);
}

#[test]
fn a_non_stream_answer_without_usage_counts_its_text() {
    let chat = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "abcdefgh",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}}]}}]});
    let u = json_usage(Surface::ChatCompletions(Vendor::Google), chat, 5);
    // approximation: "abcdefgh" 2 + "get" 1 + "{\"a\":1}" 2
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 5,
            completion_tokens: 5,
            reported: false
        }
    );
}
