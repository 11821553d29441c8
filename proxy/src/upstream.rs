//! The upstream call, driven by the gateway rather than by Pingora's proxy loop.
//!
//! Why: routing on the JSON `model` means reading the body before choosing the upstream, and Pingora
//! replays a consumed body only from its 64 KiB retry buffer (cloudflare/pingora #191, #349, #575, #780).
//! So the proxy reads the whole body (up to `max_body_bytes`), and this module writes it upstream over
//! a pooled HTTP/1.1 connection from Pingora's `TransportConnector`.
//!
//! Stale keep-alive connections: a pooled connection the upstream closed while idle fails on first use.
//! When a *reused* connection fails before any response byte arrives, the request is sent again on a
//! fresh connection (counted in `leaky_upstream_retries_total{reason="stale_connection"}`); a fresh
//! connection's failure is final, so a request is never sent twice to an upstream that answered.

use crate::metrics::count_retry;
use crate::snapshot::Upstream;
use bytes::Bytes;
use http::Method;
use leaky_filters::{RejectKind, Rejection};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession};
use pingora::protocols::Stream;
use pingora::{ErrorType, OrErr};
use tokio::io::AsyncWriteExt;

/// A response whose header has been read; the body is read by the caller.
pub struct Response {
    pub session: HttpSession,
}

pub async fn send(
    transport: &TransportConnector,
    up: &Upstream,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<Response, Rejection> {
    if let Some(stream) = up.pool.take(std::time::Instant::now()) {
        match exchange(stream, up, req, body).await {
            Ok(session) => return Ok(Response { session }),
            Err(e) if is_stale(&e) => {
                count_retry(&up.provider, "stale_connection");
                tracing::debug!(provider = %up.provider, error = %e, "pooled connection was stale; retrying fresh");
            }
            Err(e) => return Err(to_rejection(&up.provider, &e)),
        }
    }
    let stream = transport
        .new_stream(&up.peer)
        .await
        .map_err(|e| to_rejection(&up.provider, &e))?;
    let session = exchange(stream, up, req, body)
        .await
        .map_err(|e| to_rejection(&up.provider, &e))?;
    Ok(Response { session })
}

/// Bodies up to this size go out in the same write as the header.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Sends the request and reads the response header.
///
/// Pingora's client flushes the request header on its own, so header and body would cost two `send`s
/// and wake the upstream twice. For the common case (not HEAD, body ≤ 64 KiB) the serialized header and
/// the body go out in one write on the raw stream; the session is then used only to read the response.
/// That session never saw the request, which matters only for HEAD (no response body), upgrades and a
/// request `Connection` header — HEAD takes the regular path, and the gateway forwards neither
/// `Connection` nor upgrades.
async fn exchange(
    mut stream: Stream,
    up: &Upstream,
    req: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<HttpSession> {
    let mut session = if req.method != Method::HEAD && body.len() <= COALESCE_LIMIT {
        let mut wire = http_req_header_to_wire(req).ok_or_else(|| {
            pingora::Error::explain(
                ErrorType::InvalidHTTPHeader,
                "request header cannot be serialized",
            )
        })?;
        wire.extend_from_slice(body);
        let write = async {
            stream.write_all(&wire).await?;
            stream.flush().await
        };
        let written = match up.peer.options.write_timeout {
            Some(t) => tokio::time::timeout(t, write).await.map_err(|_| {
                pingora::Error::explain(ErrorType::WriteTimedout, "writing the upstream request")
            })?,
            None => write.await,
        };
        written.or_err(ErrorType::WriteError, "writing the upstream request")?;
        HttpSession::new_with_options(stream, &up.peer)
    } else {
        let mut session = HttpSession::new_with_options(stream, &up.peer);
        session.write_request_header(Box::new(req.clone())).await?;
        if !body.is_empty() {
            session.write_body(body).await?;
        }
        session.finish_body().await?;
        session
    };
    // Skip informational responses (100 Continue, 103 Early Hints).
    loop {
        session.read_response().await?;
        match session.get_status() {
            Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
            _ => return Ok(session),
        }
    }
}

/// Failures that mean "the pooled connection was already dead", not "the upstream is slow or broken".
fn is_stale(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::H1Error
    )
}

fn to_rejection(provider: &str, e: &pingora::Error) -> Rejection {
    let kind = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            RejectKind::GatewayTimeout
        }
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            RejectKind::BadGateway
        }
        _ => RejectKind::BadGateway,
    };
    tracing::warn!(provider, error = %e, "upstream call failed");
    let what = if kind == RejectKind::GatewayTimeout {
        "did not answer in time"
    } else {
        "could not be reached"
    };
    Rejection::new(kind, format!("The upstream provider `{provider}` {what}."))
}

/// Returns a finished response's connection to the pool when it can be reused.
pub async fn release(up: &Upstream, mut session: HttpSession) {
    session.respect_keepalive();
    if let Some(stream) = session.reuse().await {
        up.pool.put(stream, std::time::Instant::now());
    }
}
