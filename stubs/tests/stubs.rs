//! End-to-end tests of the three provider stubs over real sockets
//! (random ports, `Latency::Off`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use leaky_stubs::{bind, tokens, BoundStubs, Latency, StubsConfig};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn start() -> (BoundStubs, Client) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = StubsConfig {
        openai: any,
        gemini: any,
        qwen: any,
        latency: Latency::Off,
        ..StubsConfig::default()
    };
    let (bound, fut) = bind(cfg).await.unwrap();
    tokio::spawn(fut);
    (bound, Client::new())
}

/// Splits an SSE body into its `data:` payloads.
fn sse_data(body: &str, sep: &str) -> Vec<String> {
    body.split(sep)
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let line = e
                .lines()
                .find(|l| l.starts_with("data:"))
                .unwrap_or_else(|| panic!("no data line in {e:?}"));
            line.trim_start_matches("data:").trim_start().to_string()
        })
        .collect()
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 char {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= if *c == b'=' { 0 } else { val(*c) } << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn assert_openai_error(v: &Value, code: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    assert!(e.as_object().unwrap().contains_key("param"), "{v}");
    assert_eq!(e["code"].as_str(), code, "{v}");
}

mod openai {
    use leaky_stubs::tokens::Tokenizer;
    const O200K: Tokenizer = Tokenizer::O200k;
    const CL100K: Tokenizer = Tokenizer::Cl100k;
    use super::*;

    fn url(b: &BoundStubs, p: &str) -> String {
        format!("http://{}{p}", b.openai)
    }

    async fn chat(
        c: &Client,
        b: &BoundStubs,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = c
            .post(url(b, "/v1/chat/completions"))
            .bearer_auth("sk-test")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap())
    }

    #[tokio::test]
    async fn chat_shape_usage_and_echo_headers() {
        let (b, c) = start().await;
        let messages = json!([
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me something about foxes, please."}
        ]);
        let body = json!({"model": "gpt-4o-mini", "messages": messages, "seed": 1});
        let (status, headers, v) = chat(&c, &b, &body).await;
        assert_eq!(status, 200);
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["finish_reason"], "stop");
        let content = choice["message"]["content"].as_str().unwrap();
        let u = &v["usage"];
        let prompt = O200K.chat(messages.as_array().unwrap(), None);
        assert_eq!(u["prompt_tokens"], prompt);
        let completion = u["completion_tokens"].as_u64().unwrap();
        assert!((20..=60).contains(&completion), "{completion}");
        assert_eq!(O200K.text(content), completion);
        assert_eq!(u["total_tokens"].as_u64().unwrap(), prompt + completion);
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);
        let sent = serde_json::to_vec(&body).unwrap().len();
        assert_eq!(headers["x-stub-request-bytes"], sent.to_string().as_str());
        assert_eq!(headers["x-stub-saw-authorization"], "Bearer sk-test");
        assert_eq!(headers["x-stub-saw-path"], "/v1/chat/completions");
    }

    #[tokio::test]
    async fn forced_length_max_tokens_n_and_determinism() {
        let (b, c) = start().await;
        let body =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "seed": 42});
        let send = |body: Value, forced: Option<&'static str>| {
            let mut rq = c
                .post(url(&b, "/v1/chat/completions"))
                .bearer_auth("k")
                .json(&body);
            if let Some(n) = forced {
                rq = rq.header("x-stub-completion-tokens", n);
            }
            async move { rq.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let v = send(body.clone(), Some("7")).await;
        assert_eq!(v["usage"]["completion_tokens"], 7);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            O200K.text(v["choices"][0]["message"]["content"].as_str().unwrap()),
            7
        );

        let mut capped = body.clone();
        capped["max_completion_tokens"] = json!(3);
        let v = send(capped, Some("7")).await;
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["choices"][0]["finish_reason"], "length");

        let a = send(body.clone(), None).await;
        let a2 = send(body.clone(), None).await;
        assert_eq!(
            a["choices"][0]["message"]["content"],
            a2["choices"][0]["message"]["content"]
        );
        assert_ne!(a["id"], a2["id"]);
        let mut other = body.clone();
        other["seed"] = json!(43);
        let o = send(other, None).await;
        assert_ne!(
            a["choices"][0]["message"]["content"],
            o["choices"][0]["message"]["content"]
        );

        let mut n3 = body.clone();
        n3["n"] = json!(3);
        let v = send(n3, Some("5")).await;
        assert_eq!(v["choices"].as_array().unwrap().len(), 3);
        assert_eq!(v["choices"][2]["index"], 2);
        assert_eq!(v["usage"]["completion_tokens"], 15);
    }

    #[tokio::test]
    async fn streaming_chunks_usage_and_done() {
        let (b, c) = start().await;
        let body = json!({
            "model": "gpt-4.1", "seed": 9, "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Write a haiku."}]
        });
        let r = c
            .post(url(&b, "/v1/chat/completions"))
            .bearer_auth("k")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let events = sse_data(&text, "\n\n");
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let id = &chunks[0]["id"];
        assert!(chunks.iter().all(|c| &c["id"] == id));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        let finish_chunk = &chunks[chunks.len() - 2];
        assert_eq!(finish_chunk["choices"][0]["finish_reason"], "stop");
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null()));
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let u = &usage_chunk["usage"];
        assert_eq!(
            u["completion_tokens"].as_u64().unwrap(),
            O200K.text(&content)
        );
        assert_eq!(
            u["prompt_tokens"],
            O200K.chat(body["messages"].as_array().unwrap(), None)
        );
        // content deltas are one token each
        assert_eq!(
            chunks.len() - 3,
            u["completion_tokens"].as_u64().unwrap() as usize
        );

        // Same request without streaming yields the same content.
        let mut unary = body.clone();
        unary.as_object_mut().unwrap().remove("stream");
        unary.as_object_mut().unwrap().remove("stream_options");
        let (_, _, v) = chat(&c, &b, &unary).await;
        assert_eq!(v["choices"][0]["message"]["content"], content.as_str());

        // Without include_usage: no usage anywhere.
        let mut plain = body.clone();
        plain.as_object_mut().unwrap().remove("stream_options");
        let text = c
            .post(url(&b, "/v1/chat/completions"))
            .bearer_auth("k")
            .json(&plain)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("\"usage\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn tools_json_mode_and_stop() {
        let (b, c) = start().await;
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]);
        let msgs = json!([{"role": "user", "content": "Weather in Paris?"}]);
        let (_, _, v) = chat(
            &c,
            &b,
            &json!({"model": "gpt-4o", "messages": msgs, "tools": tools}),
        )
        .await;
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string() && args["days"].is_u64());
        assert_eq!(
            v["usage"]["prompt_tokens"],
            O200K.chat(msgs.as_array().unwrap(), Some(&tools))
        );

        let (_, _, v) = chat(
            &c,
            &b,
            &json!({"model": "gpt-4o", "messages": msgs, "tools": tools, "tool_choice": "none"}),
        )
        .await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"]["content"].is_string());

        let (_, _, v) = chat(&c, &b, &json!({"model": "gpt-4o", "messages": msgs, "response_format": {"type": "json_object"}})).await;
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
        assert_eq!(
            O200K.text(content),
            v["usage"]["completion_tokens"].as_u64().unwrap()
        );

        // stop: cut at the 5th word of the unconstrained answer
        let base = json!({"model": "gpt-4o", "messages": msgs, "seed": 5});
        let (_, _, v) = chat(&c, &b, &base).await;
        let full = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let stop = full.split(' ').nth(4).unwrap().to_string();
        let cut = full.find(&format!(" {stop}")).unwrap();
        let mut with_stop = base.clone();
        with_stop["stop"] = json!([format!(" {stop}")]);
        let (_, _, v) = chat(&c, &b, &with_stop).await;
        let got = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(got, &full[..cut]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"]["completion_tokens"].as_u64().unwrap(),
            O200K.text(got)
        );
    }

    #[tokio::test]
    async fn embeddings_dimensions_and_base64() {
        let (b, c) = start().await;
        let post = |body: Value| {
            let rq = c
                .post(url(&b, "/v1/embeddings"))
                .bearer_auth("k")
                .json(&body);
            async move { rq.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        for (model, dim) in [
            ("text-embedding-3-small", 1536),
            ("text-embedding-3-large", 3072),
            ("text-embedding-ada-002", 1536),
        ] {
            let v = post(json!({"model": model, "input": ["hello world", "second"]})).await;
            assert_eq!(v["object"], "list");
            assert_eq!(v["data"].as_array().unwrap().len(), 2);
            assert_eq!(v["data"][1]["index"], 1);
            assert_eq!(v["data"][0]["object"], "embedding");
            assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), dim);
            assert_eq!(
                v["usage"]["prompt_tokens"],
                CL100K.text("hello world") + CL100K.text("second")
            );
        }
        let v = post(json!({"model": "text-embedding-3-small", "input": "abc", "dimensions": 256}))
            .await;
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 256);

        let floats = post(json!({"model": "text-embedding-3-small", "input": "abc"})).await;
        let b64 = post(
            json!({"model": "text-embedding-3-small", "input": "abc", "encoding_format": "base64"}),
        )
        .await;
        let bytes = b64_decode(b64["data"][0]["embedding"].as_str().unwrap());
        assert_eq!(bytes.len(), 1536 * 4);
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let expected: Vec<f32> = floats["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, expected);
        let norm: f32 = decoded.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3);
    }

    #[tokio::test]
    async fn errors_and_models() {
        let (b, c) = start().await;
        let chat_url = url(&b, "/v1/chat/completions");
        let ok_body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]});

        let r = c.post(&chat_url).json(&ok_body).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("x-stub-saw-authorization").is_none());
        assert_openai_error(&r.json().await.unwrap(), Some("invalid_api_key"));
        let r = c
            .post(&chat_url)
            .bearer_auth("invalid-key-123")
            .json(&ok_body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_openai_error(&r.json().await.unwrap(), Some("invalid_api_key"));

        let r = c
            .post(&chat_url)
            .bearer_auth("k")
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_openai_error(&r.json().await.unwrap(), None);

        let (s, _, v) = chat(&c, &b, &json!({"model": "gpt-4o"})).await;
        assert_eq!(s, 400);
        assert_openai_error(&v, Some("missing_required_parameter"));
        assert_eq!(v["error"]["param"], "messages");
        let (s, _, v) = chat(&c, &b, &json!({"messages": []})).await;
        assert_eq!(s, 400);
        assert_eq!(v["error"]["param"], "model");
        let (s, _, v) = chat(&c, &b, &json!({"model": "gpt-4o", "messages": "hi"})).await;
        assert_eq!(s, 400);
        assert_openai_error(&v, Some("invalid_type"));
        let (s, _, v) = chat(&c, &b, &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"})).await;
        assert_eq!(s, 400);
        assert_eq!(v["error"]["param"], "max_tokens");
        let (s, _, v) = chat(
            &c,
            &b,
            &json!({"model": "llama-3", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(s, 404);
        assert_openai_error(&v, Some("model_not_found"));
        // New names in the family are accepted.
        let (s, _, _) = chat(
            &c,
            &b,
            &json!({"model": "gpt-5-nano", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(s, 200);

        let v: Value = c
            .get(url(&b, "/v1/models"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "o3-mini",
            "o4-mini",
            "text-embedding-3-small",
        ] {
            assert!(ids.contains(&m), "{m}");
        }
        let r = c
            .get(url(&b, "/v1/models/gpt-4o"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], "gpt-4o");
        assert_eq!(v["object"], "model");
        let r = c
            .get(url(&b, "/v1/models/claude-3"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_openai_error(&r.json().await.unwrap(), Some("model_not_found"));
        let r = c
            .post(url(&b, "/v1/nope"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_openai_error(&r.json().await.unwrap(), None);
    }

    #[tokio::test]
    async fn legacy_completions_health_and_metrics() {
        let (b, c) = start().await;
        let v: Value = c
            .post(url(&b, "/v1/completions"))
            .bearer_auth("k")
            .json(&json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 16);
        assert_eq!(
            v["usage"]["prompt_tokens"],
            CL100K.text("Say this is a test")
        );

        let text = c
            .post(url(&b, "/v1/completions"))
            .bearer_auth("k")
            .json(&json!({"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 4, "stream": true}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events = sse_data(&text, "\n\n");
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert_eq!(events.len(), 4 + 1 + 1);

        let r = c.get(url(&b, "/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = c
            .post(url(&b, "/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        let m = c
            .get(url(&b, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("# TYPE stub_requests_total counter"), "{m}");
        assert!(m.contains(r#"stub_requests_total{provider="openai",endpoint="/v1/completions",status="200"} 2"#), "{m}");
        assert!(m.contains(r#"stub_requests_total{provider="openai",endpoint="/v1/chat/completions",status="401"} 1"#), "{m}");
        assert!(
            m.contains(
                r#"stub_requests_total{provider="openai",endpoint="/healthz",status="200"} 1"#
            ),
            "{m}"
        );
        assert!(
            m.contains(r#"stub_completion_tokens_total{provider="openai"} 20"#),
            "{m}"
        );
    }
}

mod gemini {
    use super::*;

    /// Google serves the native surface under both API versions; every native test runs on each.
    const VERSIONS: [&str; 2] = ["/v1beta", "/v1"];

    fn url(b: &BoundStubs, p: &str) -> String {
        format!("http://{}{p}", b.gemini)
    }

    async fn post(
        c: &Client,
        b: &BoundStubs,
        path: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = c
            .post(url(b, path))
            .header("x-goog-api-key", "AIza-test")
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        let h = r.headers().clone();
        (s, h, r.json().await.unwrap())
    }

    fn req() -> Value {
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Explain how AI works in a few words"}]}],
            "generationConfig": {"seed": 3}
        })
    }

    #[tokio::test]
    async fn generate_count_tokens_and_headers() {
        for ver in VERSIONS {
            generate_count_tokens_and_headers_at(ver).await;
        }
    }

    async fn generate_count_tokens_and_headers_at(ver: &str) {
        let (b, c) = start().await;
        let (s, h, v) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-flash:generateContent"),
            &req(),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(h["x-stub-saw-authorization"], "AIza-test");
        let cand = &v["candidates"][0];
        assert_eq!(cand["content"]["role"], "model");
        assert_eq!(cand["finishReason"], "STOP");
        assert_eq!(cand["index"], 0);
        let text = cand["content"]["parts"][0]["text"].as_str().unwrap();
        let u = &v["usageMetadata"];
        let prompt = u["promptTokenCount"].as_u64().unwrap();
        let cands = u["candidatesTokenCount"].as_u64().unwrap();
        assert_eq!(cands, tokens::text(text));
        assert_eq!(u["totalTokenCount"].as_u64().unwrap(), prompt + cands);
        let r = req();
        assert_eq!(
            prompt,
            tokens::gemini(
                r["contents"].as_array().unwrap(),
                Some(&r["systemInstruction"])
            )
        );
        assert_eq!(v["modelVersion"], "gemini-2.5-flash");
        assert!(v["responseId"].as_str().is_some_and(|s| !s.is_empty()));

        // countTokens agrees with promptTokenCount (full request form) ...
        let (s, _, ct) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-flash:countTokens"),
            &json!({"generateContentRequest": req()}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(ct["totalTokens"].as_u64().unwrap(), prompt);
        // ... and with contents only (no system instruction).
        let no_sys = json!({"contents": req()["contents"]});
        let (_, _, g) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-flash:generateContent"),
            &no_sys,
        )
        .await;
        let (_, _, ct) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-flash:countTokens"),
            &no_sys,
        )
        .await;
        assert_eq!(ct["totalTokens"], g["usageMetadata"]["promptTokenCount"]);

        // ?key= works and is echoed
        let r = c
            .post(url(
                &b,
                &format!("{ver}/models/gemini-2.0-flash:generateContent?key=qkey"),
            ))
            .json(&req())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-stub-saw-authorization"], "qkey");

        // maxOutputTokens caps and determinism
        let mut capped = req();
        capped["generationConfig"]["maxOutputTokens"] = json!(5);
        let (_, _, v) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-pro:generateContent"),
            &capped,
        )
        .await;
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);
        let (_, _, again) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-pro:generateContent"),
            &capped,
        )
        .await;
        assert_eq!(v["candidates"], again["candidates"]);
    }

    #[tokio::test]
    async fn streaming_sse_and_json_array() {
        for ver in VERSIONS {
            streaming_sse_and_json_array_at(ver).await;
        }
    }

    async fn streaming_sse_and_json_array_at(ver: &str) {
        let (b, c) = start().await;
        let (_, _, unary) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-2.5-flash:generateContent"),
            &req(),
        )
        .await;
        let full = unary["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();

        let r = c
            .post(url(
                &b,
                &format!("{ver}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            ))
            .header("x-goog-api-key", "k")
            .json(&req())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let body = r.text().await.unwrap();
        assert!(body.starts_with("data: ") && body.ends_with("\r\n\r\n"));
        let events: Vec<Value> = sse_data(&body, "\r\n\r\n")
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(events.len() > 1);
        let text: String = events
            .iter()
            .map(|e| {
                e["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, full);
        let last = events.last().unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"], unary["usageMetadata"]);
        assert!(events[..events.len() - 1]
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none()));

        let r = c
            .post(url(
                &b,
                &format!("{ver}/models/gemini-2.5-flash:streamGenerateContent"),
            ))
            .header("x-goog-api-key", "k")
            .json(&req())
            .send()
            .await
            .unwrap();
        let mut arr: Vec<Value> = r.json().await.unwrap();
        let mut events = events;
        for e in arr.iter_mut().chain(events.iter_mut()) {
            assert!(e.as_object_mut().unwrap().remove("responseId").is_some());
        }
        assert_eq!(arr, events);
    }

    #[tokio::test]
    async fn embeddings_and_models() {
        for ver in VERSIONS {
            embeddings_and_models_at(ver).await;
        }
    }

    async fn embeddings_and_models_at(ver: &str) {
        let (b, c) = start().await;
        let (s, _, v) = post(
            &c,
            &b,
            &format!("{ver}/models/text-embedding-004:embedContent"),
            &json!({"content": {"parts": [{"text": "hello"}]}}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 768);
        let (_, _, v) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-embedding-001:embedContent"),
            &json!({"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 128}),
        )
        .await;
        assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 128);
        let (s, _, v) = post(
            &c,
            &b,
            &format!("{ver}/models/gemini-embedding-001:batchEmbedContents"),
            &json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}
            ]}),
        )
        .await;
        assert_eq!(s, 200);
        let embs = v["embeddings"].as_array().unwrap();
        assert_eq!(embs.len(), 2);
        assert_eq!(embs[0]["values"].as_array().unwrap().len(), 3072);
        assert_ne!(embs[0], embs[1]);

        let v: Value = c
            .get(url(&b, &format!("{ver}/models")))
            .header("x-goog-api-key", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"models/gemini-2.5-pro")
                && names.contains(&"models/text-embedding-004")
        );
        let r = c
            .get(url(&b, &format!("{ver}/models/gemini-2.5-flash")))
            .header("x-goog-api-key", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["name"], "models/gemini-2.5-flash");
        assert!(v["inputTokenLimit"].is_u64());
    }

    #[tokio::test]
    async fn google_errors() {
        for ver in VERSIONS {
            google_errors_at(ver).await;
        }
    }

    async fn google_errors_at(ver: &str) {
        let (b, c) = start().await;
        let path = format!("{ver}/models/gemini-2.5-flash:generateContent");
        let check = |v: &Value, code: u16, status: &str| {
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(v["error"]["status"], status, "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        };
        let r = c.post(url(&b, &path)).json(&req()).send().await.unwrap();
        assert_eq!(r.status(), 403);
        check(&r.json().await.unwrap(), 403, "PERMISSION_DENIED");
        let r = c
            .post(url(&b, &path))
            .header("x-goog-api-key", "invalid")
            .json(&req())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        check(&v, 400, "INVALID_ARGUMENT");
        assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
        let r = c
            .post(url(&b, &path))
            .header("x-goog-api-key", "k")
            .body("{oops")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r.json().await.unwrap(), 400, "INVALID_ARGUMENT");
        let (s, _, v) = post(&c, &b, &path, &json!({"generationConfig": {}})).await;
        assert_eq!(s, 400);
        check(&v, 400, "INVALID_ARGUMENT");
        let (s, _, v) = post(&c, &b, &path, &json!({"contents": "hello"})).await;
        assert_eq!(s, 400);
        check(&v, 400, "INVALID_ARGUMENT");
        let (s, _, v) = post(
            &c,
            &b,
            &path,
            &json!({"contents": req()["contents"], "generationConfig": {"maxOutputTokens": "x"}}),
        )
        .await;
        assert_eq!(s, 400);
        check(&v, 400, "INVALID_ARGUMENT");
        let (s, _, v) = post(
            &c,
            &b,
            &format!("{ver}/models/palm-2:generateContent"),
            &req(),
        )
        .await;
        assert_eq!(s, 404);
        check(&v, 404, "NOT_FOUND");
        let r = c
            .get(url(&b, &format!("{ver}/models/palm-2")))
            .header("x-goog-api-key", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    #[tokio::test]
    async fn openai_compatible_endpoints() {
        let (b, c) = start().await;
        let body = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}});
        let r = c
            .post(url(&b, "/v1beta/openai/chat/completions"))
            .bearer_auth("AIza")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-stub-saw-authorization"], "Bearer AIza");
        let events = sse_data(&r.text().await.unwrap(), "\n\n");
        assert_eq!(events.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

        let r = c.post(url(&b, "/v1beta/openai/chat/completions")).bearer_auth("AIza")
            .json(&json!({"model": "models/gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]})).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["usage"]["total_tokens"].is_u64());

        let v: Value = c
            .post(url(&b, "/v1beta/openai/embeddings"))
            .bearer_auth("AIza")
            .json(&json!({"model": "text-embedding-004", "input": "x"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 768);
        let v: Value = c
            .get(url(&b, "/v1beta/openai/models"))
            .bearer_auth("AIza")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "models/gemini-2.5-flash"));

        // Errors are Google errors wrapped in an array.
        let r = c
            .post(url(&b, "/v1beta/openai/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v[0]["error"]["status"], "PERMISSION_DENIED");
        let r = c
            .post(url(&b, "/v1beta/openai/chat/completions"))
            .bearer_auth("k")
            .json(&json!({"model": "gemini-2.5-flash"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v[0]["error"]["status"], "INVALID_ARGUMENT");

        // Google serves the OpenAI-compatible layer under /v1beta only.
        let r = c
            .post(url(&b, "/v1/openai/chat/completions"))
            .bearer_auth("AIza")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

mod qwen {
    use super::*;

    const GEN: &str = "/api/v1/services/aigc/text-generation/generation";

    fn url(b: &BoundStubs, p: &str) -> String {
        format!("http://{}{p}", b.qwen)
    }

    fn is_uuid(s: &str) -> bool {
        s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
    }

    fn msgs() -> Value {
        json!([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Who are you?"}])
    }

    #[tokio::test]
    async fn native_text_and_message_formats() {
        let (b, c) = start().await;
        let send = |body: Value| {
            let rq = c.post(url(&b, GEN)).bearer_auth("sk-q").json(&body);
            async move { rq.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let v = send(
            json!({"model": "qwen-plus", "input": {"messages": msgs()}, "parameters": {"seed": 1}}),
        )
        .await;
        let text = v["output"]["text"].as_str().unwrap();
        assert_eq!(v["output"]["finish_reason"], "stop");
        let u = &v["usage"];
        assert_eq!(
            u["input_tokens"],
            tokens::chat(msgs().as_array().unwrap(), None)
        );
        assert_eq!(u["output_tokens"].as_u64().unwrap(), tokens::text(text));
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
        );
        assert!(is_uuid(v["request_id"].as_str().unwrap()));

        let m = send(json!({"model": "qwen-plus", "input": {"messages": msgs()}, "parameters": {"seed": 1, "result_format": "message"}})).await;
        let choice = &m["output"]["choices"][0];
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"].as_str().unwrap(), text);

        let p = send(json!({"model": "qwen-turbo", "input": {"prompt": "hello"}, "parameters": {"max_tokens": 2}})).await;
        assert_eq!(p["output"]["finish_reason"], "length");
        assert_eq!(p["usage"]["output_tokens"], 2);
    }

    #[tokio::test]
    async fn native_sse_cumulative_and_incremental() {
        let (b, c) = start().await;
        let body = json!({"model": "qwen-max", "input": {"messages": msgs()}, "parameters": {"result_format": "message"}});
        let full: Value = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .header("x-stub-completion-tokens", "6")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let full_text = full["output"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();

        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .header("X-DashScope-SSE", "enable")
            .header("x-stub-completion-tokens", "6")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        let raw_events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(raw_events.len(), 6);
        assert!(
            raw_events[0].starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"),
            "{}",
            raw_events[0]
        );
        let events: Vec<Value> = sse_data(&text, "\n\n")
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        for (i, e) in events.iter().enumerate() {
            let fin = &e["output"]["choices"][0]["finish_reason"];
            if i + 1 < events.len() {
                assert_eq!(fin, "null");
            } else {
                assert_eq!(fin, "stop");
            }
        }
        let last = events.last().unwrap();
        assert_eq!(
            last["output"]["choices"][0]["message"]["content"],
            full_text.as_str()
        );
        assert_eq!(last["usage"], full["usage"]);

        // incremental_output, text format, via Accept header
        let body = json!({"model": "qwen-max", "input": {"messages": msgs()}, "parameters": {"incremental_output": true}});
        let text = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .header("accept", "text/event-stream")
            .header("x-stub-completion-tokens", "6")
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events: Vec<Value> = sse_data(&text, "\n\n")
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(events.len(), 7);
        let joined: String = events
            .iter()
            .map(|e| e["output"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(joined, full_text);
        assert_eq!(events.last().unwrap()["output"]["finish_reason"], "stop");
        assert_eq!(events.last().unwrap()["usage"]["output_tokens"], 6);
    }

    #[tokio::test]
    async fn embeddings_native_and_compat() {
        let (b, c) = start().await;
        let v: Value = c.post(url(&b, "/api/v1/services/embeddings/text-embedding/text-embedding")).bearer_auth("k")
            .json(&json!({"model": "text-embedding-v3", "input": {"texts": ["a", "bb"]}, "parameters": {"dimension": 512}}))
            .send().await.unwrap().json().await.unwrap();
        let e = v["output"]["embeddings"].as_array().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1]["text_index"], 1);
        assert_eq!(e[0]["embedding"].as_array().unwrap().len(), 512);
        assert_eq!(v["usage"]["total_tokens"], 2);
        let v: Value = c
            .post(url(&b, "/compatible-mode/v1/embeddings"))
            .bearer_auth("k")
            .json(&json!({"model": "text-embedding-v3", "input": "a"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1024);
    }

    #[tokio::test]
    async fn compat_chat_and_models() {
        let (b, c) = start().await;
        let r = c
            .post(url(&b, "/compatible-mode/v1/chat/completions"))
            .bearer_auth("sk-q")
            .json(&json!({"model": "qwen-plus", "messages": msgs()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-stub-saw-authorization"], "Bearer sk-q");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(
            v["usage"]["prompt_tokens"],
            tokens::chat(msgs().as_array().unwrap(), None)
        );
        let text = c
            .post(url(&b, "/compatible-mode/v1/chat/completions"))
            .bearer_auth("sk-q")
            .json(&json!({"model": "qwen-plus", "messages": msgs(), "stream": true}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let v: Value = c
            .get(url(&b, "/compatible-mode/v1/models"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "qwen-max"));
    }

    #[tokio::test]
    async fn dashscope_errors() {
        let (b, c) = start().await;
        let check = |v: &Value, code: &str| {
            assert_eq!(v["code"], code, "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(is_uuid(v["request_id"].as_str().unwrap()));
        };
        let good = json!({"model": "qwen-max", "input": {"prompt": "x"}});
        let r = c.post(url(&b, GEN)).json(&good).send().await.unwrap();
        assert_eq!(r.status(), 401);
        check(&r.json().await.unwrap(), "InvalidApiKey");
        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .body("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r.json().await.unwrap(), "InvalidParameter");
        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .json(&json!({"model": "qwen-max"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r.json().await.unwrap(), "InvalidParameter");
        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .json(&json!({"input": {"prompt": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r.json().await.unwrap(), "InvalidParameter");
        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .json(&json!({"model": "qwen-max", "input": {"messages": "hi"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r.json().await.unwrap(), "InvalidParameter");
        let r = c
            .post(url(&b, GEN))
            .bearer_auth("k")
            .json(&json!({"model": "deepseek-r1", "input": {"prompt": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        check(&r.json().await.unwrap(), "ModelNotFound");

        // compatible mode: OpenAI shape plus request_id
        let r = c
            .post(url(&b, "/compatible-mode/v1/chat/completions"))
            .json(&json!({"model": "qwen-max", "messages": msgs()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_openai_error(&v, Some("invalid_api_key"));
        assert!(is_uuid(v["request_id"].as_str().unwrap()));
    }
}

mod lifecycle {
    use super::*;

    #[tokio::test]
    async fn serve_reports_bind_errors_and_stops_on_shutdown() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = StubsConfig {
            openai: any,
            gemini: taken.local_addr().unwrap(),
            qwen: any,
            latency: Latency::Off,
            ..StubsConfig::default()
        };
        let err = leaky_stubs::serve(cfg, async {}).await.unwrap_err();
        assert!(
            matches!(
                err,
                leaky_stubs::StubsError::Bind {
                    provider: "gemini",
                    ..
                }
            ),
            "{err}"
        );

        let cfg = StubsConfig {
            openai: any,
            gemini: any,
            qwen: any,
            latency: Latency::Off,
            ..StubsConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(leaky_stubs::serve(cfg, async move {
            let _ = rx.await;
        }));
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn default_config() {
        let d = StubsConfig::default();
        assert_eq!(d.openai.to_string(), "127.0.0.1:18001");
        assert_eq!(d.gemini.to_string(), "127.0.0.1:18002");
        assert_eq!(d.qwen.to_string(), "127.0.0.1:18003");
        assert_eq!(d.latency, Latency::Realistic);
        assert!(
            d.faults.openai.is_empty() && d.faults.gemini.is_empty() && d.faults.qwen.is_empty()
        );
        assert_eq!(
            d.limits,
            leaky_stubs::PerProvider::all(leaky_stubs::RateLimits::default())
        );
        assert_eq!(d.limits.openai.requests_per_minute, 10_000_000);
        assert_eq!(d.limits.openai.tokens_per_minute, 1_000_000_000);
    }

    #[tokio::test]
    async fn realistic_latency_streams_incrementally() {
        // Routers can also be served directly on a caller-owned listener.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(l, leaky_stubs::openai_router(Latency::Realistic)).await
        });
        let start = std::time::Instant::now();
        let mut r = Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth("k")
            .header("x-stub-completion-tokens", "3")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": true}))
            .send()
            .await
            .unwrap();
        let mut chunks = 0;
        while let Some(_c) = r.chunk().await.unwrap() {
            chunks += 1;
        }
        let took = start.elapsed();
        assert!(chunks >= 2, "body arrived in {chunks} chunk(s)");
        assert!(took >= std::time::Duration::from_millis(150), "{took:?}");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
}
