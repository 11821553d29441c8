//! SSE bodies: usage from the right event, arbitrary chunk splits, streams cut short,
//! stripping the injected usage chunk.

use super::*;
use leaky_tokenize::Tokenizer;
use serde_json::{json, Value};

pub(super) const PIECES: [&str; 6] = ["Why", " big", " joy", " \"who\"", " new\\", " café."];

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// An OpenAI chat stream; `usage`: the final include_usage chunk.
fn openai_stream(usage: Option<(u64, u64)>) -> (String, String) {
    let chunk = |choices: Value| {
        let mut c = json!({"id": "c", "object": "chat.completion.chunk", "choices": choices});
        if usage.is_some() {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut s = chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]));
    for p in PIECES {
        s += &chunk(json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}]));
    }
    s += &chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]));
    let without_usage = s.clone() + "data: [DONE]\n\n";
    if let Some((p, c)) = usage {
        let u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
        s +=
            &sse(&json!({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": u}));
    }
    (s + "data: [DONE]\n\n", without_usage)
}

pub(super) fn text() -> String {
    PIECES.concat()
}

fn chat() -> Surface {
    Surface::ChatCompletions(Vendor::OpenAi)
}

#[test]
fn openai_usage_chunk_is_reported_and_stripped_at_every_split() {
    let (body, stripped) = openai_stream(Some((14, 12)));
    let b = body.as_bytes();
    let want = Usage {
        prompt_tokens: 14,
        completion_tokens: 12,
        reported: true,
    };
    for i in 0..=b.len() {
        let (out, u) = run(
            UsageTracker::new(chat(), "gpt-4o", true, false),
            b,
            &[i.max(1), b.len()],
            0,
        );
        assert_eq!((out.as_slice(), u), (b, want), "pass, split at {i}");
        let (out, u) = run(
            UsageTracker::new(chat(), "gpt-4o", true, true),
            b,
            &[i.max(1), b.len()],
            0,
        );
        assert_eq!(
            (String::from_utf8(out).unwrap(), u),
            (stripped.clone(), want),
            "strip, split at {i}"
        );
    }
    // Random small chunks, \r\n line endings.
    let crlf = body.replace('\n', "\r\n");
    let mut x: u64 = 42;
    let sizes: Vec<usize> = (0..64)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1 + (x >> 60) as usize % 7
        })
        .collect();
    let (out, u) = run(
        UsageTracker::new(chat(), "gpt-4o", true, true),
        crlf.as_bytes(),
        &sizes,
        0,
    );
    assert_eq!(u, want);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        stripped.replace('\n', "\r\n")
    );
}

#[test]
fn not_stripping_never_delays_bytes() {
    let (body, _) = openai_stream(Some((1, 2)));
    let mut t = UsageTracker::new(chat(), "gpt-4o", true, false);
    for c in body.as_bytes().chunks(3) {
        assert_eq!(t.on_chunk(c), Chunk::Pass);
    }
    assert!(t.on_end().is_empty());
    // Stripping a chunk made of whole events that are all kept: passed as is.
    let mut t = UsageTracker::new(chat(), "gpt-4o", true, true);
    let first = sse(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": null}));
    assert_eq!(t.on_chunk(first.as_bytes()), Chunk::Pass);
    assert_eq!(t.on_chunk(b"data: {\"choi"), Chunk::Replace(Vec::new()));
}

#[test]
fn a_stream_cut_before_usage_counts_the_text_received() {
    let (body, _) = openai_stream(Some((14, 12)));
    let cut_at = body.find("finish_reason\":\"stop").unwrap();
    for model in ["gpt-4o", "gpt-4"] {
        let tk = Surface::ChatCompletions(Vendor::OpenAi).tokenizer(model);
        let (_, u) = run(
            UsageTracker::new(chat(), model, true, true),
            &body.as_bytes()[..cut_at],
            &[5],
            30,
        );
        let want = tk.text(&text());
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 30,
                completion_tokens: want,
                reported: false
            },
            "{model}"
        );
    }
    // Cut mid-way through the content: only what arrived.
    let mid = body.find(" new").unwrap();
    let (_, u) = run(
        UsageTracker::new(chat(), "gpt-4o", true, false),
        &body.as_bytes()[..mid],
        &[9],
        30,
    );
    assert_eq!(
        u.completion_tokens,
        Tokenizer::O200k.text("Why big joy \"who\"")
    );
    // No include_usage at all: the stream is complete but unreported.
    let (body, _) = openai_stream(None);
    let (_, u) = run(
        UsageTracker::new(Surface::ChatCompletions(Vendor::Google), "g", true, false),
        body.as_bytes(),
        &[4],
        7,
    );
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 7,
            completion_tokens: leaky_tokenize::text(&text()),
            reported: false
        }
    );
}

#[test]
fn tool_call_and_legacy_deltas_are_counted() {
    let mut s = String::new();
    s += &sse(
        &json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
    );
    for p in ["{\"ci", "ty\":", "\"Par", "is\"}"] {
        s += &sse(
            &json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}}]}),
        );
    }
    let (_, u) = run(
        UsageTracker::new(
            Surface::ChatCompletions(Vendor::DashScope),
            "q",
            true,
            false,
        ),
        s.as_bytes(),
        &[11],
        0,
    );
    assert_eq!(
        u.completion_tokens,
        leaky_tokenize::text("get_weather") + leaky_tokenize::text("{\"city\":\"Paris\"}")
    );
    let legacy = ["abcd", "efgh", "ij"]
        .map(|t| sse(&json!({"object": "text_completion", "choices": [{"text": t, "index": 0}]})))
        .concat();
    let (_, u) = run(
        UsageTracker::new(Surface::Completions(Vendor::Google), "g", true, false),
        legacy.as_bytes(),
        &[3],
        0,
    );
    assert_eq!(u.completion_tokens, 3);
}

#[test]
fn unterminated_last_event_is_read_at_the_end() {
    let (body, stripped) = openai_stream(Some((3, 4)));
    let body = body
        .trim_end_matches("data: [DONE]\n\n")
        .trim_end()
        .to_string();
    let (out, u) = run(
        UsageTracker::new(chat(), "gpt-4o", true, true),
        body.as_bytes(),
        &[64],
        0,
    );
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            reported: true
        }
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        stripped.trim_end_matches("data: [DONE]\n\n")
    );
    // A kept unterminated event is forwarded by on_end.
    let mut t = UsageTracker::new(chat(), "gpt-4o", true, true);
    assert_eq!(t.on_chunk(b"data: [DONE]"), Chunk::Replace(Vec::new()));
    assert_eq!(t.on_end(), b"data: [DONE]".to_vec());
}
