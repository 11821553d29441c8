//! The connection layer (issue #11, point 9), on raw sockets against the real binary: whole-head
//! timeout, keep-alive idle timeout, head size limit, connection limit, strict framing, pipelining.
//! Timeouts are configured small; the tests wait on the server's own socket events (a response, a
//! close), never on sleeps standing in for logic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{Gateway, Upstreams, PRO_KEY};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any test waits for the server to do something.
const PATIENCE: Duration = Duration::from_secs(10);

/// The harness's config with `server` settings added.
async fn start(server: &str) -> (Upstreams, Gateway) {
    let up = Upstreams::start().await;
    let cfg = up
        .config("")
        .replacen("server:\n", &format!("server:\n{server}"), 1);
    let gw = Gateway::start(&cfg).await;
    (up, gw)
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A raw client connection that reads responses framed by `Content-Length` (or until close).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    /// Reads more bytes; false on close (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "the server neither answered nor closed within {PATIENCE:?}; got so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next response, or `None` if the server closed first.
    async fn response(&mut self) -> Option<Response> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "closed mid-head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .expect("responses here carry Content-Length")
            .parse()
            .unwrap();
        while self.buf.len() < end + len {
            assert!(self.fill().await, "closed mid-body");
        }
        r.body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Some(r)
    }

    /// Waits until the server closes the connection; returns how long that took. Any response
    /// bytes that arrive first are kept in `buf`.
    async fn closed_after(&mut self) -> Duration {
        let start = Instant::now();
        while self.fill().await {}
        start.elapsed()
    }
}

fn models_request(id: &str) -> String {
    format!(
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\nx-request-id: {id}\r\n\r\n"
    )
}

#[tokio::test]
async fn slowloris_is_closed_after_the_header_timeout_although_bytes_keep_coming() {
    let (_up, gw) = start("  header_timeout_ms: 300\n").await;
    let mut conn = Conn::open(gw.proxy).await;
    conn.send(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        .await;
    let (mut read, mut write) = conn.stream.into_split();
    // The attacker's side: one byte every 50 ms, far inside any per-read timeout.
    let trickle = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(PATIENCE, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("a trickling head was still open after {PATIENCE:?}"),
        }
    }
    let took = start.elapsed();
    trickle.abort();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(
        took < Duration::from_secs(3),
        "closed only after {took:?} (header timeout 300 ms)"
    );
    assert_eq!(refused(&gw, "head_timeout").await, 1.0);
}

/// `leaky_connections_refused_total` of the proxy listener for `reason`.
async fn refused(gw: &Gateway, reason: &str) -> f64 {
    gw.metric(&format!(
        "leaky_connections_refused_total{{listener=\"proxy\",reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_after_the_idle_timeout() {
    let (_up, gw) = start("  keepalive_timeout_ms: 300\n").await;
    let mut conn = Conn::open(gw.proxy).await;
    conn.send(models_request("idle-1").as_bytes()).await;
    let r = conn.response().await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let took = conn.closed_after().await;
    assert!(conn.buf.is_empty(), "an idle close sends nothing");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "idle connection closed after {took:?} (keep-alive timeout 300 ms)"
    );
}

#[tokio::test]
async fn a_header_block_over_the_limit_gets_431_and_close() {
    let (_up, gw) = start("  max_header_bytes: 4096\n").await;
    let mut conn = Conn::open(gw.proxy).await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    conn.send(big.as_bytes()).await;
    let r = conn.response().await.expect("a response before the close");
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    conn.closed_after().await;

    // A head under the limit is served.
    let mut ok = Conn::open(gw.proxy).await;
    ok.send(models_request("fits").as_bytes()).await;
    assert_eq!(ok.response().await.unwrap().status, 200);
    assert_eq!(refused(&gw, "head_too_large").await, 1.0);
}

#[tokio::test]
async fn over_the_connection_limit_is_refused_while_held_connections_and_admin_answer() {
    let (_up, gw) = start("  max_connections: 4\n  admin_max_connections: 4\n").await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = Conn::open(gw.proxy).await;
        c.send(models_request(&format!("held-{i}")).as_bytes())
            .await;
        assert_eq!(c.response().await.unwrap().status, 200);
        held.push(c);
    }
    // A fifth connection is told at once, without sending anything.
    let mut extra = Conn::open(gw.proxy).await;
    let r = extra
        .response()
        .await
        .expect("a refusal, not a silent close");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.header("retry-after").is_some());
    extra.closed_after().await;

    // The held connections still answer, and so does the admin listener.
    for (i, c) in held.iter_mut().enumerate() {
        c.send(models_request(&format!("again-{i}")).as_bytes())
            .await;
        assert_eq!(c.response().await.unwrap().status, 200);
    }
    let health = gw
        .client
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(refused(&gw, "overloaded").await, 1.0);
    let open = gw
        .metric("leaky_connections_open{listener=\"proxy\"}")
        .await;
    assert_eq!(open, 4.0, "the four held connections");

    // A freed slot is usable again.
    drop(held.pop());
    common::eventually(
        "a new connection is served after one closed",
        PATIENCE,
        Some(&gw),
        || async {
            let mut c = Conn::open(gw.proxy).await;
            c.send(models_request("after").as_bytes()).await;
            c.response().await.is_some_and(|r| r.status == 200)
        },
    )
    .await;
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let (_up, gw) = start("").await;
    let mut conn = Conn::open(gw.proxy).await;
    let raw = format!("GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {PRO_KEY}\r\n\r\n");
    conn.send(raw.as_bytes()).await;
    let r = conn.response().await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("Host"));
    conn.closed_after().await;
    assert_eq!(refused(&gw, "bad_request").await, 1.0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closed() {
    let (_up, gw) = start("").await;
    let mut conn = Conn::open(gw.proxy).await;
    // A request the upstream would answer 200 if the gateway let it through.
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    conn.send(raw.as_bytes()).await;
    let r = conn.response().await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("not both"),
        "{r:?}"
    );
    assert_eq!(r.header("connection"), Some("close"));
    conn.closed_after().await;
    assert!(conn.buf.is_empty(), "nothing after the 400");
}

#[tokio::test]
async fn transfer_codings_other_than_a_lone_chunked_are_501() {
    let (_up, gw) = start("").await;
    for te in ["gzip", "gzip, chunked"] {
        let mut conn = Conn::open(gw.proxy).await;
        let raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\n\
             Transfer-Encoding: {te}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        conn.send(raw.as_bytes()).await;
        let r = conn.response().await.unwrap();
        assert_eq!(r.status, 501, "Transfer-Encoding: {te}: {r:?}");
        conn.closed_after().await;
    }
    assert_eq!(refused(&gw, "unsupported_coding").await, 2.0);
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_all_answered_in_order() {
    let (_up, gw) = start("").await;
    let mut conn = Conn::open(gw.proxy).await;
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let chat = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\n\
         x-request-id: pipe-2\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let all = [models_request("pipe-1"), chat, models_request("pipe-3")].concat();
    conn.send(all.as_bytes()).await;
    for id in ["pipe-1", "pipe-2", "pipe-3"] {
        let r = conn
            .response()
            .await
            .unwrap_or_else(|| panic!("no response for {id}: the connection closed"));
        assert_eq!(r.status, 200, "{id}: {r:?}");
        assert_eq!(r.header("x-request-id"), Some(id));
    }
    // And the connection is still usable.
    conn.send(models_request("pipe-4").as_bytes()).await;
    assert_eq!(conn.response().await.unwrap().status, 200);
}

#[tokio::test]
async fn connect_is_405_and_closed() {
    let (_up, gw) = start("").await;
    let mut conn = Conn::open(gw.proxy).await;
    conn.send(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        .await;
    let r = conn.response().await.unwrap();
    assert_eq!(r.status, 405, "{r:?}");
    conn.closed_after().await;
    assert!(conn.buf.is_empty(), "nothing after the 405");
}

/// A body that breaks its framing fails inside the request phase: the caller gets `400` (from
/// `fail_to_proxy`) and the connection closes, since the body's end is unknowable.
#[tokio::test]
async fn a_malformed_chunked_body_is_400_and_closed() {
    let (_up, gw) = start("").await;
    let mut conn = Conn::open(gw.proxy).await;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {PRO_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    conn.send(raw.as_bytes()).await;
    let r = conn.response().await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    conn.closed_after().await;
    assert!(conn.buf.is_empty(), "nothing after the 400");
}
