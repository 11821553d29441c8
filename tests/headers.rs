//! What crosses the gateway, end to end (issue #11, points 6 and 11): the capture upstream reports
//! exactly which headers it received, so every assertion is about what the provider saw. Requests carry
//! an allow-list per dialect (plus `forward_headers`), never the caller's account or test-only headers,
//! never hop-by-hop ones; `X-Forwarded-For` is the real peer. Provider-only response headers stay with
//! the gateway. Model names with control characters are refused in the route's dialect, and the text
//! log keeps one line per event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{eventually, sha256_hex, Gateway, Upstreams, PRO_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "lt-headers";

/// The capture provider behind `/capture` (defaults only) and `/faults` (which lets the stubs'
/// `x-stub-*` headers through), with the gateway's own organization and project.
fn config(up: &Upstreams, server_extra: &str) -> String {
    format!(
        r#"server:
  threads: 2
{server_extra}
providers:
  capture:
    base_url: http://{c}
    credential: capture-credential
    organization: org-gateway
    project: proj-gateway
    forward_headers: [x-provider-extra]
routes:
  - name: plain
    prefix: /capture
    upstream: {{ provider: capture, path_prefix: /echo }}
    filters: &chain [{{ kind: request-id }}, {{ kind: api-key }}]
    endpoints: &any {{ allow: [{{ method: "*", path: "/**" }}] }} # a test surface: any endpoint
  - name: faults
    prefix: /faults
    upstream: {{ provider: capture, path_prefix: /echo }}
    filters: *chain
    endpoints: *any
    forward_headers: ["x-stub-*"]
tiers: {{ pro: {{}} }}
keys:
  - {{ id: k, sha256: {h}, user: u, tier: pro }}
"#,
        c = up.capture.addr,
        h = sha256_hex(KEY.as_bytes()),
    )
}

/// One request written by hand (reqwest/hyper would not send some of these headers as given), with
/// `Connection: close` so the answer ends with the connection. Returns the status and the capture's
/// report.
async fn raw_post(gw: &Gateway, path: &str, extra_headers: &str) -> (u16, Value) {
    let body = r#"{"model":"capture-1"}"#;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("the gateway closes a `Connection: close` exchange")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn caller_account_test_hop_by_hop_and_unknown_headers_do_not_reach_the_provider() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let (status, v) = raw_post(
        &gw,
        "/capture/chat/completions",
        "Connection: close, X-Hop\r\n\
         X-Hop: named-in-connection\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         TE: trailers\r\n\
         OpenAI-Organization: org-of-the-caller\r\n\
         OpenAI-Project: proj-of-the-caller\r\n\
         X-DashScope-WorkSpace: ws-of-the-caller\r\n\
         X-Stub-Fault: status=500\r\n\
         X-Foo: bar\r\n\
         Cookie: session=caller\r\n\
         User-Agent: OpenAI/Python 1.99.0\r\n\
         X-Stainless-Lang: python\r\n\
         OpenAI-Beta: assistants=v2\r\n\
         X-Provider-Extra: allowed-by-the-provider\r\n",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let h = v["headers"].as_object().unwrap();
    for name in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "x-dashscope-workspace",
        "x-stub-fault",
        "x-foo",
        "cookie",
    ] {
        assert!(!h.contains_key(name), "`{name}` reached the provider: {v}");
    }
    assert!(
        h.get("connection")
            .is_none_or(|c| !c.as_str().unwrap().to_lowercase().contains("x-hop")),
        "{v}"
    );
    // The account is the gateway's, from the provider's config.
    assert_eq!(h["openai-organization"], "org-gateway", "{v}");
    assert_eq!(h["openai-project"], "proj-gateway", "{v}");
    assert_eq!(h["authorization"], "Bearer capture-credential");
    // What the SDKs send and providers use still goes, and what the provider's config allows.
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["user-agent"], "OpenAI/Python 1.99.0");
    assert_eq!(h["x-stainless-lang"], "python");
    assert_eq!(h["openai-beta"], "assistants=v2");
    assert_eq!(h["x-provider-extra"], "allowed-by-the-provider");
    // Replaced, not added to: one line each of what the gateway sets over the caller's.
    assert_eq!(v["repeated"], serde_json::json!([]), "{v}");
}

#[tokio::test]
async fn a_route_that_allows_x_stub_headers_forwards_them() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let (status, v) = raw_post(
        &gw,
        "/faults/chat/completions",
        "Connection: close\r\nX-Stub-Fault: hang=1ms\r\nX-Foo: bar\r\n",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["headers"]["x-stub-fault"], "hang=1ms", "{v}");
    assert!(v["headers"].get("x-foo").is_none(), "{v}");
}

#[tokio::test]
async fn x_forwarded_for_is_the_real_peer_unless_the_peer_is_a_trusted_proxy() {
    let up = Upstreams::start().await;
    let spoof =
        "Connection: close\r\nX-Forwarded-For: 203.0.113.66\r\nForwarded: for=203.0.113.66\r\n";
    let untrusted = Gateway::start(&config(&up, "")).await;
    let (_, v) = raw_post(&untrusted, "/capture/chat/completions", spoof).await;
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(v["headers"]["forwarded"], "for=127.0.0.1", "{v}");
    assert_eq!(v["repeated"], serde_json::json!([]), "{v}");

    let trusted = Gateway::start(&config(&up, "  trusted_proxies: [127.0.0.0/8]")).await;
    let (_, v) = raw_post(&trusted, "/capture/chat/completions", spoof).await;
    assert_eq!(
        v["headers"]["x-forwarded-for"], "203.0.113.66, 127.0.0.1",
        "{v}"
    );
    assert_eq!(
        v["headers"]["forwarded"], "for=203.0.113.66, for=127.0.0.1",
        "{v}"
    );
    // No chain received: the peer alone.
    let (_, v) = raw_post(
        &trusted,
        "/capture/chat/completions",
        "Connection: close\r\n",
    )
    .await;
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
}

#[tokio::test]
async fn provider_only_response_headers_do_not_reach_the_client() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, "")).await;
    let get = |path: &'static str| {
        gw.client
            .post(gw.url(path))
            .bearer_auth(KEY)
            .json(&json!({"model": "capture-1"}))
            .send()
    };
    let r = get("/capture/cookies").await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h.get("set-cookie").is_none(), "{h:?}");
    assert!(h.get("openai-organization").is_none(), "{h:?}");
    assert!(h.get("x-stub-saw-authorization").is_none(), "{h:?}");
    assert_eq!(h["openai-processing-ms"], "7", "{h:?}");
    // A route that lets the stubs' diagnostics back gets them, but never the cookie.
    let r = get("/faults/cookies").await.unwrap();
    let h = r.headers();
    assert_eq!(h["x-stub-saw-authorization"], "Bearer capture-credential");
    assert!(h.get("set-cookie").is_none(), "{h:?}");
}

/// Polls the gateway's log until the access lines of these request ids are written.
async fn wait_logged(gw: &Gateway, ids: &[&str]) -> String {
    eventually(
        "the access log has every request",
        Duration::from_secs(10),
        Some(gw),
        || async { ids.iter().all(|id| gw.log().contains(id)) },
    )
    .await;
    gw.log()
}

#[tokio::test]
async fn a_model_with_control_characters_is_refused_in_dialect_and_forges_no_log_line() {
    let up = Upstreams::start().await;
    // Metered routes, so an accepted request would also write a usage record with its model.
    let metered = up.config("").replace(
        "      - kind: api-key\n",
        "      - kind: api-key\n      - kind: rate-limit\n",
    );
    assert!(metered.contains("kind: rate-limit"));
    let gw = Gateway::start_text_log(&metered).await;
    let forged = "capture-1\r\nFORGED 2026-01-01T00:00:00Z  INFO usage: total_tokens=0";
    let send = |path: &str, id: &'static str, body: Value| {
        gw.client
            .post(gw.url(path))
            .bearer_auth(PRO_KEY)
            .header("x-goog-api-key", PRO_KEY)
            .header("x-request-id", id)
            .json(&body)
            .send()
    };
    // OpenAI dialect: the JSON body's model, on the model-routed front door and on a fixed route.
    for (path, id) in [
        ("/v1/chat/completions", "forge-openai-v1"),
        ("/capture/chat/completions", "forge-openai-fixed"),
    ] {
        let r = send(path, id, json!({"model": forged, "messages": []}))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], "model", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid model name"),
            "{v}"
        );
    }
    // Google dialect: the model in the path (control characters arrive percent-encoded), and one
    // too long.
    let long = format!(
        "/gemini/v1beta/models/gemini-{}:generateContent",
        "a".repeat(300)
    );
    // A CR/LF in the path is refused by path normalization (control characters), before the model
    // is read from it; an overlong model name by the model check.
    for (path, id, refused_as) in [
        (
            "/gemini/v1beta/models/gemini-2.5-flash%0D%0AFORGED:generateContent".to_string(),
            "forge-google",
            "Invalid request path",
        ),
        (long, "forge-google-long", "Invalid model name"),
    ] {
        let r = send(&path, id, json!({"contents": []})).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        assert_eq!(v["error"]["code"], 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(refused_as),
            "{v}"
        );
    }
    // DashScope dialect: the native API's body model, with a terminal escape as well.
    let r = send(
        "/qwen/api/v1/services/aigc/text-generation/generation",
        "forge-dashscope",
        json!({"model": "qwen-plus\n\u{1b}[2JFORGED", "input": {"messages": []}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "InvalidParameter", "{v}");
    assert_eq!(v["request_id"], "forge-dashscope", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid model name"),
        "{v}"
    );

    let log = wait_logged(
        &gw,
        &[
            "forge-openai-v1",
            "forge-openai-fixed",
            "forge-google",
            "forge-google-long",
            "forge-dashscope",
        ],
    )
    .await;
    for line in log.lines() {
        assert!(!line.starts_with("FORGED"), "forged log line:\n{log}");
        assert!(
            !line.contains("\u{1b}[2J"),
            "terminal escape in the log:\n{log}"
        );
    }
}
