//! Golden fixtures: the exact JSON of one representative response per surface and dialect, success
//! and error, with only the volatile values (ids, timestamps) masked. A change to any field name,
//! nesting, type or fixed value shows up as a diff against `stubs/tests/golden/*.json`.
//! Regenerate deliberately with `LEAKY_UPDATE_GOLDEN=1 cargo test -p leaky-stubs --test integration -- golden::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_stubs::{bind, Latency, StubsConfig};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Keys whose values change per request; replaced by `"<masked>"`.
const VOLATILE: &[&str] = &[
    "id",
    "created",
    "created_at",
    "request_id",
    "responseId",
    "completed_at",
];

fn mask(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if VOLATILE.contains(&k.as_str()) && !val.is_object() && !val.is_array() {
                    *val = json!("<masked>");
                } else if k == "embedding" || k == "values" {
                    // Vectors are deterministic but long: pin their length and first value.
                    if let Value::Array(a) = val {
                        *val = json!({"len": a.len(), "first": a.first()});
                    }
                } else {
                    mask(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

struct Case {
    name: &'static str,
    stub: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Option<(&'static str, &'static str)>,
    body: Value,
}

fn cases() -> Vec<Case> {
    let bearer = Some(("authorization", "Bearer sk-golden"));
    let goog = Some(("x-goog-api-key", "golden-key"));
    let chat = json!({"model": "gpt-4o-mini", "seed": 7, "max_tokens": 12,
                      "messages": [{"role": "user", "content": "Tell me something about foxes."}]});
    vec![
        Case {
            name: "openai-chat",
            stub: "openai",
            method: "POST",
            path: "/v1/chat/completions",
            auth: bearer,
            body: chat.clone(),
        },
        Case {
            name: "openai-responses",
            stub: "openai",
            method: "POST",
            path: "/v1/responses",
            auth: bearer,
            body: json!({"model": "gpt-4o-mini", "input": "Tell me something about foxes.", "max_output_tokens": 12}),
        },
        Case {
            name: "openai-embeddings",
            stub: "openai",
            method: "POST",
            path: "/v1/embeddings",
            auth: bearer,
            body: json!({"model": "text-embedding-3-small", "input": "foxes"}),
        },
        Case {
            name: "openai-error-no-key",
            stub: "openai",
            method: "POST",
            path: "/v1/chat/completions",
            auth: None,
            body: chat.clone(),
        },
        Case {
            name: "openai-error-bad-model",
            stub: "openai",
            method: "POST",
            path: "/v1/chat/completions",
            auth: bearer,
            body: json!({"model": "llama-3", "messages": []}),
        },
        Case {
            name: "gemini-generate",
            stub: "gemini",
            method: "POST",
            path: "/v1beta/models/gemini-2.5-flash:generateContent",
            auth: goog,
            body: json!({"contents": [{"role": "user", "parts": [{"text": "Tell me something about foxes."}]}],
                            "generationConfig": {"maxOutputTokens": 12, "seed": 7}}),
        },
        Case {
            name: "gemini-count-tokens",
            stub: "gemini",
            method: "POST",
            path: "/v1beta/models/gemini-2.5-flash:countTokens",
            auth: goog,
            body: json!({"contents": [{"parts": [{"text": "Tell me something about foxes."}]}]}),
        },
        Case {
            name: "gemini-error-no-key",
            stub: "gemini",
            method: "POST",
            path: "/v1beta/models/gemini-2.5-flash:generateContent",
            auth: None,
            body: json!({"contents": []}),
        },
        Case {
            name: "dashscope-generation",
            stub: "qwen",
            method: "POST",
            path: "/api/v1/services/aigc/text-generation/generation",
            auth: bearer,
            body: json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "Tell me something about foxes."}]},
                            "parameters": {"result_format": "message", "max_tokens": 12, "seed": 7}}),
        },
        Case {
            name: "dashscope-error-no-key",
            stub: "qwen",
            method: "POST",
            path: "/api/v1/services/aigc/text-generation/generation",
            auth: None,
            body: json!({"model": "qwen-plus", "input": {"prompt": "hi"}}),
        },
    ]
}

#[tokio::test]
async fn responses_match_their_golden_fixtures() {
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = StubsConfig {
        openai: any,
        gemini: any,
        qwen: any,
        latency: Latency::Off,
        ..StubsConfig::default()
    };
    let (bound, serve) = bind(cfg).await.unwrap();
    tokio::spawn(serve);
    let client = reqwest::Client::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("LEAKY_UPDATE_GOLDEN").is_some();
    let mut diffs = Vec::new();
    for c in cases() {
        let addr = match c.stub {
            "openai" => bound.openai,
            "gemini" => bound.gemini,
            _ => bound.qwen,
        };
        let mut req = client
            .request(
                c.method.parse().unwrap(),
                format!("http://{addr}{}", c.path),
            )
            .json(&c.body);
        if let Some((k, v)) = c.auth {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let mut body: Value = r.json().await.unwrap();
        mask(&mut body);
        let got =
            serde_json::to_string_pretty(&json!({"status": status, "body": body})).unwrap() + "\n";
        let path = dir.join(format!("{}.json", c.name));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("missing {}; run with LEAKY_UPDATE_GOLDEN=1", path.display())
        });
        if want != got {
            diffs.push(format!(
                "{}:\n--- expected\n{want}\n--- actual\n{got}",
                c.name
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} golden mismatches:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
