//! SSE bodies of the Responses API and the native Gemini and DashScope APIs.

use super::streams::{text, PIECES};
use super::*;
use leaky_tokenize::Tokenizer;
use serde_json::{json, Value};

#[test]
fn responses_stream_takes_usage_from_response_completed() {
    let ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        format!("event: {name}\ndata: {v}\n\n")
    };
    let mut s = ev(
        "response.created",
        json!({"response": {"status": "in_progress", "usage": null}}),
    );
    for p in PIECES {
        s += &ev(
            "response.output_text.delta",
            json!({"output_index": 0, "delta": p}),
        );
    }
    let before_done = s.len();
    s += &ev(
        "response.completed",
        json!({"response": {"status": "completed", "output": [{"content": [{"text": text()}]}],
        "usage": {"input_tokens": 11, "output_tokens": 9, "total_tokens": 20}}}),
    );
    let surface = Surface::Responses(Vendor::OpenAi);
    let (out, u) = run(
        UsageTracker::new(surface, "gpt-4o", true, true),
        s.as_bytes(),
        &[13],
        0,
    );
    assert_eq!(out, s.as_bytes(), "only chat/completions are ever stripped");
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 11,
            completion_tokens: 9,
            reported: true
        }
    );
    let (_, u) = run(
        UsageTracker::new(surface, "gpt-4o", true, false),
        &s.as_bytes()[..before_done],
        &[13],
        4,
    );
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 4,
            completion_tokens: Tokenizer::O200k.text(&text()),
            reported: false
        }
    );
}

/// Gemini `alt=sse`: `\r\n` framing, usage on every chunk, candidatesTokenCount at the end.
fn gemini_stream() -> String {
    let mut s = String::new();
    let groups = ["Why big joy", " \"who\" new\\", " café."];
    for (i, g) in groups.iter().enumerate() {
        let last = i + 1 == groups.len();
        let mut cand = json!({"content": {"parts": [{"text": g}], "role": "model"}, "index": 0});
        let mut usage = json!({"promptTokenCount": 8, "totalTokenCount": 8});
        if last {
            cand["finishReason"] = json!("STOP");
            usage =
                json!({"promptTokenCount": 8, "candidatesTokenCount": 10, "totalTokenCount": 18});
        }
        s += &format!(
            "data: {}\r\n\r\n",
            json!({"candidates": [cand], "usageMetadata": usage})
        );
    }
    s
}

#[test]
fn gemini_sse_final_usage_and_cut() {
    let s = gemini_stream();
    let t = || {
        UsageTracker::new(
            Surface::GeminiStreamGenerate,
            "gemini-2.5-flash",
            true,
            true,
        )
    };
    let (out, u) = run(t(), s.as_bytes(), &[17], 0);
    assert_eq!(out, s.as_bytes());
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 8,
            completion_tokens: 10,
            reported: true
        }
    );
    let cut = s.rfind("data:").unwrap();
    let (_, u) = run(t(), &s.as_bytes()[..cut], &[17], 99);
    let seen = leaky_tokenize::text("Why big joy \"who\" new\\");
    assert_eq!(
        u,
        Usage {
            prompt_tokens: 8,
            completion_tokens: seen,
            reported: false
        }
    );
}

fn dashscope_stream(incremental: bool) -> (String, u64) {
    let mut acc = String::new();
    let mut s = String::new();
    for (i, p) in PIECES.iter().enumerate() {
        acc.push_str(p);
        let last = i + 1 == PIECES.len();
        let text = if incremental {
            p.to_string()
        } else {
            acc.clone()
        };
        let fin = if last && !incremental { "stop" } else { "null" };
        let out = leaky_tokenize::text(&acc);
        let data = json!({"output": {"choices": [{"message": {"content": text, "role": "assistant"}, "finish_reason": fin}]},
            "usage": {"input_tokens": 14, "output_tokens": out, "total_tokens": 14 + out}, "request_id": "r"});
        s += &format!(
            "id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n",
            i + 1
        );
    }
    let total = leaky_tokenize::text(&acc);
    if incremental {
        let data = json!({"output": {"text": "", "finish_reason": "stop"},
            "usage": {"input_tokens": 14, "output_tokens": total, "total_tokens": 14 + total}});
        s += &format!("id:9\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n");
    }
    (s, total)
}

#[test]
fn dashscope_cumulative_and_incremental() {
    for incremental in [false, true] {
        let (s, total) = dashscope_stream(incremental);
        for told in [false, true] {
            let t = || {
                UsageTracker::new(Surface::DashScopeGeneration, "qwen-plus", true, false)
                    .incremental_output(told && incremental)
            };
            let (out, u) = run(t(), s.as_bytes(), &[19], 0);
            assert_eq!(out, s.as_bytes());
            assert_eq!(
                u,
                Usage {
                    prompt_tokens: 14,
                    completion_tokens: total,
                    reported: true
                },
                "{incremental} {told}"
            );
            // Cut before the final event: the provider's partial counts agree with the text.
            let cut = s.rfind("id:").unwrap();
            let (_, u) = run(t(), &s.as_bytes()[..cut], &[19], 0);
            let seen = if incremental {
                total
            } else {
                leaky_tokenize::text(&PIECES[..5].concat())
            };
            assert_eq!(
                u,
                Usage {
                    prompt_tokens: 14,
                    completion_tokens: seen,
                    reported: false
                },
                "{incremental} {told}"
            );
        }
    }
}
