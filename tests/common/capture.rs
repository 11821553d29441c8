//! A test upstream that answers with exactly what it received (method, path, query, headers, body
//! length and SHA-256), streams on command, and can misbehave like a keep-alive peer that closed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};

#[derive(Clone, Default)]
struct Shared {
    /// Chunks for the next `/echo/stream` request, sent by the test one at a time.
    stream: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
    /// A `/echo/gate` request waits for a message here before answering.
    gate: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

pub struct Capture {
    pub addr: SocketAddr,
    shared: Shared,
}

impl Capture {
    pub async fn start() -> Capture {
        let shared = Shared::default();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Capture { addr, shared }
    }

    /// Arms `/echo/stream`: its response body is whatever the returned sender sends, chunk by chunk.
    pub async fn arm_stream(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(8);
        *self.shared.stream.lock().await = Some(rx);
        tx
    }

    /// Whether an armed `/echo/gate` request has arrived (and is now waiting).
    pub async fn gate_taken(&self) -> bool {
        self.shared.gate.lock().await.is_none()
    }

    /// Arms `/echo/gate`: it answers once the returned sender sends.
    pub async fn arm_gate(&self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel(1);
        *self.shared.gate.lock().await = Some(rx);
        tx
    }
}

async fn handle(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/echo/stream" {
        let rx = s.stream.lock().await.take().expect("stream not armed");
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    if uri.path() == "/echo/gate" {
        let rx = s.gate.lock().await.take();
        if let Some(mut rx) = rx {
            rx.recv().await;
        }
    }
    let hdrs: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    // What a provider may set that only concerns the gateway: a cookie for its own origin, the
    // account it billed, and stub diagnostics (one echoing the credential it received).
    let provider_only = uri.path() == "/echo/cookies";
    // Names sent more than once: the map above keeps the last value only.
    let mut repeated: Vec<&str> = headers
        .keys()
        .filter(|k| headers.get_all(*k).iter().count() > 1)
        .map(|k| k.as_str())
        .collect();
    repeated.sort_unstable();
    let report = serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": hdrs,
        "repeated": repeated,
        "body_len": body.len(),
        "body_sha256": super::sha256_hex(&body),
    });
    let mut resp = Response::builder().header("content-type", "application/json");
    if provider_only {
        let auth = headers.get("authorization").cloned();
        resp = resp
            .header("set-cookie", "__cf_bm=provider-session; Path=/; HttpOnly")
            .header("openai-organization", "org-of-the-gateway")
            .header("openai-processing-ms", "7")
            .header(
                "x-stub-saw-authorization",
                auth.unwrap_or(axum::http::HeaderValue::from_static("")),
            );
    }
    resp.body(Body::from(serde_json::to_vec(&report).unwrap()))
        .unwrap()
}

/// An HTTP/1.1 upstream that answers the first request of every connection, then — like a peer whose
/// keep-alive timer fired just as the next request arrived — reads the next request and closes without
/// answering. Returns its address and a counter of requests answered.
pub async fn stale_after_one() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let mut served = 0;
                loop {
                    // Read one full request (headers + Content-Length body).
                    let mut data = Vec::new();
                    let request_done = loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break false,
                            Ok(n) => n,
                        };
                        data.extend_from_slice(&buf[..n]);
                        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if data.len() >= end + 4 + len {
                                break true;
                            }
                        }
                    };
                    if !request_done {
                        return;
                    }
                    if served == 1 {
                        return; // drop the connection without a response
                    }
                    served += 1;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = b"{\"ok\":true}";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    sock.write_all(resp.as_bytes()).await.unwrap();
                    sock.write_all(body).await.unwrap();
                }
            });
        }
    });
    (addr, answered)
}
