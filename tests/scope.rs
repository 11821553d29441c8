//! What a key may reach (issue #11, points 4 and 5): only a route's allowed endpoints get the gateway's
//! provider credential, and every check sees the one normalized path that is also forwarded. The real
//! binary in front of a recording upstream that lists every request it received; odd request targets
//! go over a raw socket, because HTTP clients resolve dot segments themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::*;
use axum::http::{Method, Uri};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FREE_KEY: &str = "lt-scope-free";
const ADMIN_KEY: &str = "lt-scope-admin";

/// An upstream that records `METHOD path?query` of every request and answers 200 `{}`.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{method} {uri}"));
                axum::Json(json!({}))
            }
        });
        let addr = common::serve(app).await;
        Recorder { addr, seen }
    }

    /// What arrived since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Every provider is the recorder; `openai_extra` is appended to the `/openai/v1` route.
fn config(rec: &Recorder, openai_extra: &str) -> String {
    format!(
        r#"server: {{ threads: 2 }}
providers:
  openai: {{ base_url: "http://{r}", credential: sk-gateway, models: [gpt-4o] }}
  gemini: {{ base_url: "http://{r}", auth: goog-api-key, credential: g-gateway, models: [gemini-2.5-flash] }}
  qwen: {{ base_url: "http://{r}", credential: sk-gateway, models: [qwen-plus] }}
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model: [{{ models: ["gpt-*"], provider: openai, path_prefix: /v1 }}]
    filters: &chain [{{ kind: request-id }}, {{ kind: api-key }}]
  - name: openai
    prefix: /openai/v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: *chain
{openai_extra}
  - name: gemini
    prefix: /gemini/v1beta
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1beta }}
    filters: *chain
  - name: qwen
    prefix: /qwen/api/v1
    dialect: dashscope
    upstream: {{ provider: qwen, path_prefix: /api/v1 }}
    filters: *chain
tiers:
  free: {{ priority: low }}
keys:
  - {{ id: scope-free, sha256: {free}, user: fred, tier: free, roles: [developer] }}
  - {{ id: scope-admin, sha256: {admin}, user: ada, tier: free, roles: [admin] }}
"#,
        r = rec.addr,
        free = sha256_hex(FREE_KEY.as_bytes()),
        admin = sha256_hex(ADMIN_KEY.as_bytes()),
    )
}

/// Sends `method target` verbatim (with a small JSON body for POST) and returns status and JSON body.
async fn raw(gw: &Gateway, method: &str, target: &str, key: &str) -> (u16, Value) {
    let body = if method == "POST" {
        r#"{"model":"gpt-4o","messages":[]}"#
    } else {
        ""
    };
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {method} {target}: {text:?}"));
    let json = text
        .find("\r\n\r\n")
        .and_then(|i| serde_json::from_str(&text[i + 4..]).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn endpoints_outside_the_allow_list_get_404_in_dialect_and_never_reach_the_provider() {
    let rec = Recorder::start().await;
    let gw = Gateway::start(&config(&rec, "")).await;

    // The probes of the issue: each used the gateway's provider credential with the free key.
    for (method, path) in [
        ("GET", "/openai/v1/files"),
        ("DELETE", "/openai/v1/files/file-abc123"),
        ("GET", "/openai/v1/fine_tuning/jobs"),
        ("POST", "/openai/v1/chat/completions/extra"),
        ("GET", "/qwen/api/v1/tasks/task-1"),
    ] {
        let (status, body) = raw(&gw, method, path, FREE_KEY).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        if path.starts_with("/qwen") {
            assert!(body["code"].is_string(), "DashScope dialect: {body}");
        } else {
            assert_eq!(
                body["error"]["code"], "unknown_url",
                "{method} {path}: {body}"
            );
        }
    }
    let (status, body) = raw(&gw, "GET", "/gemini/v1beta/files", FREE_KEY).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"]["status"], "NOT_FOUND",
        "Google dialect: {body}"
    );
    assert_eq!(body["error"]["code"], 404, "{body}");
    assert_eq!(
        rec.take(),
        Vec::<String>::new(),
        "nothing reached the provider"
    );

    // The inference and listing endpoints still go through, path unchanged.
    for (method, path, upstream) in [
        (
            "POST",
            "/openai/v1/chat/completions?x=1",
            "POST /v1/chat/completions?x=1",
        ),
        ("POST", "/openai/v1/embeddings", "POST /v1/embeddings"),
        ("GET", "/openai/v1/models/gpt-4o", "GET /v1/models/gpt-4o"),
        (
            "POST",
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
            "POST /v1beta/models/gemini-2.5-flash:generateContent",
        ),
        ("GET", "/gemini/v1beta/models", "GET /v1beta/models"),
        (
            "POST",
            "/qwen/api/v1/services/aigc/text-generation/generation",
            "POST /api/v1/services/aigc/text-generation/generation",
        ),
    ] {
        let (status, body) = raw(&gw, method, path, FREE_KEY).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        assert_eq!(rec.take(), vec![upstream.to_string()], "{method} {path}");
    }
}

#[tokio::test]
async fn a_route_allows_extra_endpoints_some_only_for_a_role() {
    let rec = Recorder::start().await;
    let extra = r#"    endpoints:
      allow:
        - { method: GET, path: /files }
        - { method: DELETE, path: "/files/{id}", roles: [admin] }"#;
    let gw = Gateway::start(&config(&rec, extra)).await;

    let (status, body) = raw(&gw, "GET", "/openai/v1/files", FREE_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rec.take(), vec!["GET /v1/files".to_string()]);

    let (status, body) = raw(&gw, "DELETE", "/openai/v1/files/file-1", FREE_KEY).await;
    assert_eq!(status, 404, "without the role: {body}");
    assert_eq!(rec.take(), Vec::<String>::new());
    let (status, body) = raw(&gw, "DELETE", "/openai/v1/files/file-1", ADMIN_KEY).await;
    assert_eq!(status, 200, "with the role: {body}");
    assert_eq!(rec.take(), vec!["DELETE /v1/files/file-1".to_string()]);

    // The defaults still hold next to the extras; other routes keep only theirs.
    let (status, _) = raw(&gw, "POST", "/openai/v1/chat/completions", FREE_KEY).await;
    assert_eq!(status, 200);
    let (status, _) = raw(&gw, "GET", "/openai/v1/fine_tuning/jobs", ADMIN_KEY).await;
    assert_eq!(status, 404);
    let (status, _) = raw(&gw, "GET", "/gemini/v1beta/files", ADMIN_KEY).await;
    assert_eq!(status, 404);
    assert_eq!(rec.take(), vec!["POST /v1/chat/completions".to_string()]);
}

#[tokio::test]
async fn paths_are_normalized_before_routing_checks_and_forwarding_or_refused() {
    let rec = Recorder::start().await;
    let gw = Gateway::start(&config(&rec, "")).await;

    // Normalized, then routed, checked and forwarded in that one form.
    for (method, target, upstream) in [
        (
            "POST",
            "/openai/v1//chat///completions",
            "POST /v1/chat/completions",
        ),
        (
            "POST",
            "//openai/v1/./chat/completions",
            "POST /v1/chat/completions",
        ),
        (
            "POST",
            "/openai/v1/%63hat/completions",
            "POST /v1/chat/completions",
        ),
        (
            "POST",
            "/openai/v1/models/../chat/completions",
            "POST /v1/chat/completions",
        ),
        (
            "GET",
            "/gemini/v1beta/models/gemini-2%2E5-flash",
            "GET /v1beta/models/gemini-2.5-flash",
        ),
    ] {
        let (status, body) = raw(&gw, method, target, FREE_KEY).await;
        assert_eq!(status, 200, "{method} {target}: {body}");
        assert_eq!(rec.take(), vec![upstream.to_string()], "{method} {target}");
    }

    // Traversal lands on the normalized path: no route, or an endpoint the route does not allow.
    for target in [
        "/openai/v1/../../admin/secret",
        "/v1/models/gpt-4o/../../files",
        "/gemini/v1beta/models/x/../../files",
    ] {
        let (status, body) = raw(&gw, "GET", target, FREE_KEY).await;
        assert_eq!(status, 404, "{target}: {body}");
        assert!(
            !body.to_string().contains(".."),
            "the message names the normalized path: {body}"
        );
    }
    // What cannot be normalized safely is a 400 in the route's dialect.
    for (target, dialect_field) in [
        ("/openai/v1/%2e%2e/%2e%2e/admin/secret", "type"),
        ("/openai/v1/.%2E/files", "type"),
        ("/openai/v1/files%2F..%2F..%2Fadmin", "type"),
        ("/openai/v1/x/../../v1/files", "type"),
        ("/openai/v1/../../../etc/passwd", "type"),
        ("/gemini/v1beta/models/x%00:generateContent", "status"),
        ("/gemini/v1beta/models/a%5C..%5Cfiles", "status"),
    ] {
        let (status, body) = raw(&gw, "GET", target, FREE_KEY).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body["error"][dialect_field].is_string(), "{target}: {body}");
    }
    let (status, _) = raw(&gw, "GET", "/openai/v1\\..\\..\\admin", FREE_KEY).await;
    assert_eq!(status, 400, "a backslash");
    assert_eq!(rec.take(), Vec::<String>::new(), "nothing was forwarded");
}
