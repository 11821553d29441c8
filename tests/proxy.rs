//! The request path, end to end: the real binary between a real HTTP client and real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use serde_json::{json, Value};

async fn setup() -> (Upstreams, Gateway) {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    (up, gw)
}

#[tokio::test]
async fn chat_completion_through_v1_has_usage_request_id_and_gateway_credential() {
    let (_up, gw) = setup().await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(rid.starts_with("req_"), "{rid}");
    // The stub reports the credential it saw: the gateway's (from the environment), never the caller's.
    assert_eq!(
        r.headers()["x-stub-saw-authorization"],
        format!("Bearer {OPENAI_CREDENTIAL}").as_str()
    );
    assert_eq!(r.headers()["x-stub-saw-path"], "/v1/chat/completions");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn v1_routes_by_model_to_each_provider() {
    let (_up, gw) = setup().await;
    for (model, provider, path) in [
        ("gpt-4o", "openai", "/v1/chat/completions"),
        (
            "gemini-2.5-flash",
            "gemini",
            "/v1beta/openai/chat/completions",
        ),
        ("qwen-plus", "qwen", "/compatible-mode/v1/chat/completions"),
    ] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(PRO_KEY)
            .json(&chat(model, "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["x-stub-provider"], provider, "{model}");
        assert_eq!(r.headers()["x-stub-saw-path"], path, "{model}");
    }
}

#[tokio::test]
async fn models_list_is_the_union_of_providers() {
    let (_up, gw) = setup().await;
    let v: Value = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(PRO_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(v["object"], "list");
    for m in [
        "gpt-4o",
        "gpt-4o-mini",
        "gemini-2.5-flash",
        "qwen-plus",
        "capture-1",
    ] {
        assert!(ids.contains(&m), "{m} missing from {ids:?}");
    }
}

#[tokio::test]
async fn bad_keys_get_401_in_each_dialect() {
    let (_up, gw) = setup().await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=wrong"))
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(v["error"]["code"], 401);

    let r = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .header("x-request-id", "my-req-7")
        .json(&json!({"model": "qwen-plus", "input": {"prompt": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"request_id": "my-req-7", "code": "InvalidApiKey", "message": v["message"].clone()})
    );

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(EXPIRED_KEY)
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "The API key provided has expired.");
}

/// Under both API versions Google serves natively (`/gemini/v1` since issue #12: the google-genai
/// SDK's default with a base URL).
#[tokio::test]
async fn gemini_native_key_from_query_is_replaced_by_the_gateway_credential() {
    let (_up, gw) = setup().await;
    for version in ["v1beta", "v1"] {
        let r = gw
            .client
            .post(gw.url(&format!(
                "/gemini/{version}/models/gemini-2.5-flash:generateContent?key={PRO_KEY}"
            )))
            .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{version}");
        assert_eq!(r.headers()["x-stub-saw-authorization"], "gemini-credential");
        assert_eq!(
            r.headers()["x-stub-saw-path"],
            format!("/{version}/models/gemini-2.5-flash:generateContent").as_str()
        );
        let v: Value = r.json().await.unwrap();
        assert!(v["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn model_errors_render_in_dialect() {
    let (_up, gw) = setup().await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&chat("llama-3", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(LIMITED_KEY)
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let ok = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(LIMITED_KEY)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("We could not parse the JSON body"));

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "model");

    let r = gw.client.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_url"
    );
}

#[tokio::test]
async fn one_mib_body_arrives_intact_and_eleven_mib_gets_413_in_dialect() {
    let (_up, gw) = setup().await;
    let prompt = "x".repeat(1 << 20);
    let body = serde_json::to_vec(&chat("capture-1", &prompt)).unwrap();
    assert!(body.len() > 1 << 20);
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_sha256"], sha256_hex(&body));
    assert_eq!(v["path"], "/echo/chat/completions");

    let huge = serde_json::to_vec(&chat("capture-1", &"y".repeat(11 << 20))).unwrap();
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "request_too_large"
    );
    let r = gw
        .client
        .post(gw.url(&format!(
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={PRO_KEY}"
        )))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "INVALID_ARGUMENT"
    );
}

#[tokio::test]
async fn chunked_request_over_the_limit_gets_413() {
    let (_up, gw) = setup().await;
    // No Content-Length: the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..11).map(|_| Ok(vec![b' '; 1 << 20])).collect();
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The gateway answers 413 and closes; depending on timing the client sees the answer or a reset.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let ok = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&chat("capture-1", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn headers_request_id_and_traceparent_are_propagated_and_keys_stripped() {
    let (_up, gw) = setup().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw
        .client
        .post(gw.url(&format!("/capture/things?key={PRO_KEY}&x=1")))
        .header("x-goog-api-key", PRO_KEY)
        .header("x-request-id", "client-id-1")
        .header("traceparent", tp)
        .header("x-custom", "kept")
        .json(&json!({"model": "capture-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/echo/things");
    assert_eq!(v["query"], "x=1");
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], "client-id-1");
    assert_eq!(h["traceparent"], tp);
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["authorization"], "Bearer capture-credential");
    assert!(
        h.get("x-goog-api-key").is_none(),
        "caller key leaked upstream: {h}"
    );
    assert_eq!(h["host"], gw_capture_host(&v));
}

fn gw_capture_host(v: &Value) -> Value {
    // The upstream Host header is the provider's authority, whatever the client sent.
    v["headers"]["host"].clone()
}

#[tokio::test]
async fn streaming_passes_each_chunk_before_the_next_exists() {
    let (up, gw) = setup().await;
    let tx = up.capture.arm_stream().await;
    let mut r = gw
        .client
        .post(gw.url("/capture/stream"))
        .bearer_auth(PRO_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    for i in 0..3 {
        let event = format!("data: {{\"n\":{i}}}\n\n");
        tx.send(event.clone().into()).await.unwrap();
        // The upstream has not produced chunk i+1 yet, so receiving chunk i proves it was not buffered.
        let got = r.chunk().await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), event);
    }
    tx.send("data: [DONE]\n\n".into()).await.unwrap();
    drop(tx);
    let rest = r.text().await.unwrap();
    assert_eq!(rest, "data: [DONE]\n\n");
}

#[tokio::test]
async fn sse_from_the_openai_stub_streams_with_usage() {
    let (_up, gw) = setup().await;
    let mut body = chat("gpt-4o-mini", "hello there");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let usage: Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn post_on_a_stale_pooled_connection_is_retried_on_a_fresh_one() {
    let (addr, answered) = capture::stale_after_one().await;
    let up = Upstreams::start().await;
    let config = up.config("").replace(
        &format!("base_url: http://{}", up.capture.addr),
        &format!("base_url: http://{addr}"),
    );
    let gw = Gateway::start(&config).await;
    for i in 0..4 {
        let r = gw
            .client
            .post(gw.url("/capture/x"))
            .bearer_auth(PRO_KEY)
            .json(&json!({"i": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(
        gw.metric("leaky_upstream_retries_total{provider=\"capture\",reason=\"stale_connection\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn smuggled_request_behind_conflicting_framing_never_runs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, gw) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    // Content-Length covers the smuggled request; Transfer-Encoding ends the body at once. Whatever a
    // front end believes, the gateway must neither forward the tail upstream nor run it as a request.
    let smuggled = format!(
        "GET /capture/smuggled HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PRO_KEY}\r\n\r\n"
    );
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /capture/front HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PRO_KEY}\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.to_lowercase().contains("connection: close"), "{text}");
    // Refused outright (RFC 9112 §6.1), before routing: neither request reaches the upstream.
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("not both"), "{text}");
    assert!(!text.contains("smuggled"), "{text}");
}

#[tokio::test]
async fn upstream_down_gets_502_in_dialect() {
    let up = Upstreams::start().await;
    let dead = free_port();
    let config = up.config("").replace(
        &format!("base_url: http://{}", up.capture.addr),
        &format!("base_url: http://{dead}"),
    );
    let gw = Gateway::start(&config).await;
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(PRO_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
}

#[tokio::test]
async fn metrics_count_requests_by_route_provider_and_class() {
    let (_up, gw) = setup().await;
    for _ in 0..3 {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(PRO_KEY)
            .json(&chat("gpt-4o", "hi"))
            .send()
            .await
            .unwrap();
    }
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("nope")
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    // Metrics are recorded when a request completes (Pingora's logging phase), just after the
    // response is written: wait for the counts rather than read them the instant the client returns.
    let expected = [
        (
            "leaky_requests_total{provider=\"openai\",route=\"v1\",status_class=\"2xx\"}",
            3.0,
        ),
        (
            "leaky_requests_total{provider=\"none\",route=\"v1\",status_class=\"4xx\"}",
            1.0,
        ),
        (
            "leaky_rejections_total{reason=\"unauthenticated\",route=\"v1\"}",
            1.0,
        ),
    ];
    let all_counted = || async {
        let mut ok = true;
        for (sample, n) in expected {
            ok &= gw.metric(sample).await >= n;
        }
        ok
    };
    eventually(
        "every request is counted",
        std::time::Duration::from_secs(5),
        Some(&gw),
        all_counted,
    )
    .await;
    for (sample, n) in expected {
        assert_eq!(gw.metric(sample).await, n, "{sample}");
    }
    let text = gw.admin_text("/metrics").await;
    assert!(
        text.contains("leaky_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("leaky_upstream_duration_seconds_count{provider=\"openai\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn one_json_access_log_line_per_request() {
    let (_up, gw) = setup().await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .header("x-request-id", "log-me-1")
        .json(&chat("gpt-4o", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // The line is written when the request completes; wait for it rather than for a fixed time.
    let logged = || async { gw.log().contains("log-me-1") };
    eventually(
        "the access log line is written",
        std::time::Duration::from_secs(5),
        Some(&gw),
        logged,
    )
    .await;
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("log-me-1")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["target"], "access");
    assert_eq!(v["route"], "v1");
    assert_eq!(v["provider"], "openai");
    assert_eq!(v["principal"], "test-pro");
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["status"], 200);
    assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
}
