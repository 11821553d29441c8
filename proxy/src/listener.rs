//! The connection layer under both HTTP listeners (proxy and admin): it owns a client connection from
//! accept to close and hands Pingora one complete, checked request head at a time.
//!
//! - **Connection limit.** Each connection holds a slot of a fixed budget for its whole life. When
//!   none is free the new connection is answered `503` with `Connection: close` at once, without
//!   reading the request, and closed: the refusal costs no header parsing and no slot.
//! - **Whole-head timeout.** The request line and headers must arrive within `header_timeout`,
//!   counted from accept (first request) or from the head's first byte (later requests): a total,
//!   not Pingora's per-read timeout that a byte every few seconds keeps alive forever. On expiry:
//!   `408` and close.
//! - **Keep-alive idle timeout.** Between requests a connection may sit idle `keepalive_timeout`,
//!   then it is closed quietly. Pingora would wait forever (its HTTP/1.1 keep-alive is infinite).
//! - **Head size.** A head larger than `max_header_bytes` gets `431` and the connection is closed;
//!   at most that many bytes are ever buffered for a head.
//! - **Strict framing** (RFC 9112): an HTTP/1.1 request without `Host` → `400`; `Content-Length`
//!   with `Transfer-Encoding` → `400`; a transfer coding other than a lone `chunked` → `501`. Each
//!   closes the connection, since the body's end is unknowable.
//! - **Pipelining.** Bytes past a request that carries no body or a `Content-Length` body are kept
//!   here and parsed as the next request, so pipelined requests are answered in order. (Pingora
//!   itself would answer the first and close, dropping the rest.) After a chunked body, extra bytes
//!   already read still make Pingora close the connection after its response.
//!
//! Every refusal is written, then the write side is shut and the rest of the request is read and
//! discarded for a short linger, so the client reads the response instead of a reset.
//!
//! The head is parsed here with `httparse` (the parser Pingora uses, same version) and handed to
//! Pingora as a "pipelined prefix": Pingora parses it from memory without another socket read.
//!
//! **TLS** (`server.tls`, `server.admin_tls`): the handshake runs here, inside the connection's slot
//! and within the first head's deadline (`header_timeout` from accept), so a client that opens TCP
//! and never sends a ClientHello holds nothing past that. The certificate is the serving config
//! version's (re-read on each reload). A client that speaks plain HTTP to a TLS port gets a readable
//! `400` instead of a handshake alert. ALPN `h2` hands the connection to `h2.rs`; `http/1.1` (or no
//! ALPN) runs the HTTP/1.1 loop below, unchanged. At the connection limit a TLS listener closes the
//! new connection without a handshake (a plain-text 503 would be unreadable, and the handshake is the
//! cost the limit avoids).

mod h2;

use crate::metrics::ListenerMetrics;
use crate::tls::ListenerCert;
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Headers a head may carry (Pingora's own maximum).
const MAX_HEADERS: usize = 256;
/// First allocation of a connection's head buffer.
const INITIAL_BUF: usize = 4096;
/// How long a refused connection is drained after its response before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained from a refused connection.
const LINGER_BYTES: usize = 1 << 20;

/// How a listener hands one checked HTTP/1 request to its app: the connection, its keep-alive
/// settings from the request before, and the bytes read so far (the head, and what of the body
/// came with it). By default through Pingora's `HttpServerApp::process_new_http`; the gateway
/// takes the request straight to its phases (`service/app.rs`).
pub trait H1Serve: HttpServerApp + Send + Sync + 'static {
    fn serve_h1(
        self: &Arc<Self>,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send {
        async move {
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings {
                s.apply_to_session(&mut session);
            }
            session.set_pipelined_prefix(prefix);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            self.process_new_http(session, shutdown).await
        }
    }
}

/// A listener's connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

/// A Pingora `ServerApp` that applies [`ConnLimits`] in front of an HTTP app (the proxy or admin).
pub struct Listener<A> {
    app: Arc<A>,
    limits: ConnLimits,
    slots: Semaphore,
    /// `leaky_connections_open` and `leaky_connections_refused_total` of this listener.
    metrics: Option<ListenerMetrics>,
    /// Set: the listener speaks TLS.
    tls: Option<TlsSource>,
    /// `leaky_tls_cert_expiry_timestamp_seconds` of this listener (TLS only).
    cert_expiry: Option<prometheus::IntGauge>,
}

/// Where a TLS listener takes its certificate from for each new connection.
pub struct TlsSource {
    /// What the listener started with; kept while a later config version has no `tls` for it (turning
    /// TLS off takes a restart).
    initial: Arc<ListenerCert>,
    /// The serving config version's certificate: one atomic load per connection.
    current: Box<dyn Fn() -> Option<Arc<ListenerCert>> + Send + Sync>,
}

impl TlsSource {
    pub fn new(
        initial: Arc<ListenerCert>,
        current: impl Fn() -> Option<Arc<ListenerCert>> + Send + Sync + 'static,
    ) -> Self {
        TlsSource {
            initial,
            current: Box::new(current),
        }
    }

    fn cert(&self) -> Arc<ListenerCert> {
        (self.current)().unwrap_or_else(|| self.initial.clone())
    }
}

impl<A> Listener<A> {
    /// `name` labels the listener's connection metrics (`proxy`, `admin`).
    pub fn new(name: &str, app: A, limits: ConnLimits) -> Self {
        Listener {
            app: Arc::new(app),
            slots: Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)),
            limits,
            metrics: ListenerMetrics::new(name),
            tls: None,
            cert_expiry: None,
        }
    }

    /// Makes the listener speak TLS with `tls`'s certificate.
    pub fn with_tls(mut self, tls: TlsSource) -> Self {
        self.cert_expiry = self.metrics.as_ref().and_then(ListenerMetrics::cert_expiry);
        if let Some(g) = &self.cert_expiry {
            g.set(tls.cert().not_after);
        }
        self.tls = Some(tls);
        self
    }

    /// Whether the listener speaks TLS.
    pub fn speaks_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn count_refused(&self, reason: usize) {
        if let Some(m) = &self.metrics {
            m.refused[reason].inc();
        }
    }

    /// Counts the refusal, then writes it and closes.
    async fn refuse(&self, stream: Stream, r: Refusal) {
        self.count_refused(r.reason_index());
        refuse(stream, r).await;
    }

    /// The TLS handshake, by `deadline`; `None` (counted, logged at debug) when it does not complete.
    async fn handshake(
        &self,
        tls: &TlsSource,
        mut stream: Stream,
        deadline: Instant,
    ) -> Option<Stream> {
        let cert = tls.cert();
        // An atomic store per connection keeps the gauge on the certificate actually served.
        if let Some(g) = &self.cert_expiry {
            g.set(cert.not_after);
        }
        // A TLS client's first byte is a handshake record (22); an HTTP client's is a method letter.
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await {
            Ok(Ok(true)) if first[0] != 22 => {
                self.refuse(stream, Refusal::PlainHttp).await;
                return None;
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                self.count_refused(TLS_HANDSHAKE);
                return None;
            }
        }
        // Pingora's handshake wants the concrete socket type, which is what a TCP listener accepts.
        let Ok(socket) = stream.into_any().downcast::<L4Stream>() else {
            tracing::warn!("TLS listener accepted something other than a socket; closing it");
            return None;
        };
        match tokio::time::timeout_at(deadline, cert.acceptor.tls_handshake(*socket)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                self.count_refused(TLS_HANDSHAKE);
                None
            }
            Err(_) => {
                self.count_refused(TLS_HANDSHAKE);
                None
            }
        }
    }
}

/// `reason="tls_handshake"` in [`crate::metrics::REFUSAL_REASONS`]: a handshake that failed or did not
/// finish within the head deadline.
const TLS_HANDSHAKE: usize = 6;

/// One open connection in `leaky_connections_open`, for as long as it lives.
struct Open<'a>(Option<&'a ListenerMetrics>);

impl<'a> Open<'a> {
    fn new(m: Option<&'a ListenerMetrics>) -> Self {
        if let Some(m) = m {
            m.open.inc();
        }
        Open(m)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.open.dec();
        }
    }
}

#[async_trait]
impl<A: H1Serve> ServerApp for Listener<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_slot) = self.slots.try_acquire() else {
            if self.tls.is_some() {
                self.count_refused(Refusal::Overloaded.reason_index());
            } else {
                self.refuse(stream, Refusal::Overloaded).await;
            }
            return None;
        };
        let _open = Open::new(self.metrics.as_ref());
        let accepted = Instant::now();
        let stream = match &self.tls {
            None => stream,
            Some(tls) => {
                let deadline = accepted + self.limits.header_timeout;
                let stream = self.handshake(tls, stream, deadline).await?;
                if stream.selected_alpn_proto() == Some(ALPN::H2) {
                    h2::serve(&self.app, stream, shutdown, &self.limits, deadline).await;
                    return None;
                }
                stream
            }
        };
        self.serve(stream, shutdown, accepted).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A: H1Serve> Listener<A> {
    /// Request after request on one connection until either side closes it.
    /// `accepted`: when the connection was accepted (its first head is due `header_timeout` later).
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch, accepted: Instant) {
        let mut buf = BytesMut::with_capacity(INITIAL_BUF);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = Some(accepted);
        loop {
            let head = match read_head(&mut stream, &mut buf, first, &self.limits, shutdown).await {
                Ok(head) => head,
                Err(Ended::Quietly) => return,
                Err(Ended::Refused(r)) => return self.refuse(stream, r).await,
            };
            // Hand Pingora exactly this request when its end is known; keep what follows (the next
            // pipelined request) for the next turn.
            let take = match head.body {
                Some(n) if (buf.len() - head.len) as u64 >= n => head.len + n as usize,
                _ => buf.len(),
            };
            let prefix = buf.split_to(take);
            if buf.capacity() < INITIAL_BUF {
                buf.reserve(INITIAL_BUF);
            }
            let reused = self
                .app
                .serve_h1(stream, settings.take(), prefix, shutdown)
                .await;
            let Some((next, s)) = reused.map(|r| r.consume()) else {
                return;
            };
            stream = next;
            settings = s;
            first = None;
        }
    }
}

/// What a checked request head says about framing.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes of the head, request line to the blank line.
    len: usize,
    /// Body length when known up front: 0 without a body, else `Content-Length`. `None` for chunked
    /// bodies (or a length Pingora will judge).
    body: Option<u64>,
}

/// Why no request head is coming.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client closed, went idle past the keep-alive timeout, or the server is stopping.
    Quietly,
    Refused(Refusal),
}

/// A response the listener writes itself before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Overloaded,
    HeadTimeout,
    HeadTooLarge,
    BadRequest(&'static str),
    UnsupportedCoding,
    /// Plain HTTP sent to a TLS listener.
    PlainHttp,
}

impl Refusal {
    /// Its `reason` in [`crate::metrics::REFUSAL_REASONS`].
    fn reason_index(self) -> usize {
        match self {
            Refusal::Overloaded => 0,
            Refusal::HeadTimeout => 1,
            Refusal::HeadTooLarge => 2,
            Refusal::BadRequest(_) => 3,
            Refusal::UnsupportedCoding => 4,
            Refusal::PlainHttp => 5,
        }
    }

    fn response(self) -> Vec<u8> {
        let (status, code, message) = match self {
            Refusal::Overloaded => (
                "503 Service Unavailable",
                "server_overloaded",
                "The gateway is at its connection limit; retry shortly.",
            ),
            Refusal::HeadTimeout => (
                "408 Request Timeout",
                "request_timeout",
                "The request head did not arrive in time.",
            ),
            Refusal::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "request_header_fields_too_large",
                "The request head is larger than the gateway accepts.",
            ),
            Refusal::BadRequest(why) => ("400 Bad Request", "invalid_request", why),
            Refusal::UnsupportedCoding => (
                "501 Not Implemented",
                "unsupported_transfer_coding",
                "Only the chunked transfer coding is supported.",
            ),
            Refusal::PlainHttp => (
                "400 Bad Request",
                "tls_required",
                "This port speaks TLS: use https://.",
            ),
        };
        // OpenAI's error shape: the route (and so its dialect) is not known before the head is read.
        let body = serde_json::json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null, "code": code,
        }})
        .to_string();
        let retry = if self == Refusal::Overloaded {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             {retry}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Reads until `buf` starts with a complete, acceptable request head. `first`: when the connection
/// was accepted, for its first request.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    first: Option<Instant>,
    limits: &ConnLimits,
    shutdown: &ShutdownWatch,
) -> Result<Head, Ended> {
    // The first request's head is due `header_timeout` after accept; a later one's after its
    // first byte, which itself may take up to `keepalive_timeout`.
    let mut deadline = first.map(|accepted| accepted + limits.header_timeout);
    loop {
        if !buf.is_empty() {
            if let Some(head) = check_head(buf, limits.max_header_bytes)? {
                return Ok(head);
            }
            deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
        }
        // Never more than the limit in the buffer (so never more than Pingora's own ceiling either);
        // a partial head that fills it was refused above, so there is always room here.
        let room = limits.max_header_bytes.saturating_sub(buf.len()).max(1);
        buf.reserve(room.min(INITIAL_BUF));
        let mut limited = (&mut *buf).limit(room);
        let read = stream.read_buf(&mut limited);
        let n = match deadline {
            Some(at) => match tokio::time::timeout_at(at, read).await {
                Ok(n) => n,
                Err(_) if buf.is_empty() => return Err(Ended::Quietly),
                Err(_) => return Err(Ended::Refused(Refusal::HeadTimeout)),
            },
            None => {
                let mut stop = shutdown.clone();
                // Pingora's timer wheel rather than tokio's: re-arming a tokio timer on every
                // keep-alive wait woke the worker through the time driver once per request.
                tokio::select! {
                    n = pingora_timeout::timeout(limits.keepalive_timeout, read) => match n {
                        Ok(n) => n,
                        Err(_) => return Err(Ended::Quietly),
                    },
                    _ = stop.changed() => return Err(Ended::Quietly),
                }
            }
        };
        match n {
            Ok(0) | Err(_) => return Err(Ended::Quietly),
            Ok(_) => {}
        }
    }
}

/// `Ok(None)`: the head is not complete yet. A complete head is checked for size and framing.
fn check_head(buf: &[u8], max: usize) -> Result<Option<Head>, Ended> {
    // Uninitialized: 256 headers are 8 KiB that an initialized array would write on every request.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Err(Ended::Refused(Refusal::HeadTooLarge))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        // Pingora escapes some invalid request targets itself: let it see a complete head as is.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            return match head_end(buf) {
                Some(len) if len <= max => Ok(Some(Head { len, body: None })),
                None if buf.len() < max => Ok(None),
                _ => Err(Ended::Refused(Refusal::HeadTooLarge)),
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Ended::Refused(Refusal::HeadTooLarge)),
        Err(_) => {
            return Err(Ended::Refused(Refusal::BadRequest(
                "The request head is malformed.",
            )))
        }
    };
    if len > max {
        return Err(Ended::Refused(Refusal::HeadTooLarge));
    }
    framing(&req).map(|body| Some(Head { len, body }))
}

/// The body length a request declares, after RFC 9112's framing rules.
fn framing(req: &httparse::Request<'_, '_>) -> Result<Option<u64>, Ended> {
    let bad = |why| Err(Ended::Refused(Refusal::BadRequest(why)));
    let (mut host, mut length, mut te) = (false, None::<&[u8]>, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            host = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if te || !coding.eq_ignore_ascii_case(b"chunked") {
                    // Another coding (gzip, deflate …), or chunked applied twice: not supported.
                    return Err(Ended::Refused(Refusal::UnsupportedCoding));
                }
                te = true;
            }
        }
    }
    if req.version == Some(1) && !host {
        return bad("An HTTP/1.1 request must carry a Host header.");
    }
    if te && length.is_some() {
        return bad("A request may carry Content-Length or Transfer-Encoding, not both.");
    }
    if te {
        if req.version != Some(1) {
            return bad("Transfer-Encoding requires HTTP/1.1.");
        }
        return Ok(None);
    }
    Ok(match length {
        None => Some(0),
        // Pingora validates the value itself (and refuses a bad one); it only sizes the split here.
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    })
}

/// End of a head by its blank line (CRLF CRLF, or the bare LF LF that httparse also accepts).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes the refusal, shuts the write side and drains what the client still sends for a moment,
/// so the response is read rather than lost to a reset.
async fn refuse(mut stream: Stream, r: Refusal) {
    let response = r.response();
    let written = tokio::time::timeout(LINGER, async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<Option<Head>, Ended> {
        check_head(raw.as_bytes(), 1024)
    }

    #[test]
    fn complete_heads_report_their_framing() {
        let get = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        assert_eq!(
            check(get),
            Ok(Some(Head {
                len: 27,
                body: Some(0)
            }))
        );
        let post = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(check(post).unwrap().unwrap().body, Some(5));
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(check(chunked).unwrap().unwrap().body, None);
        assert_eq!(
            check("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().body,
            Some(0)
        );
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn refuses_what_rfc_9112_forbids() {
        let refused = |raw: &str| match check(raw) {
            Err(Ended::Refused(r)) => r,
            other => panic!("{raw:?} gave {other:?}"),
        };
        assert!(matches!(
            refused("GET / HTTP/1.1\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "chunked, chunked"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refused(&raw), Refusal::UnsupportedCoding, "{te}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert_eq!(refused(&big), Refusal::HeadTooLarge);
        assert_eq!(refused(&big[..1500]), Refusal::HeadTooLarge);
    }

    #[test]
    fn refusals_are_complete_responses() {
        let r = String::from_utf8(Refusal::HeadTooLarge.response()).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
