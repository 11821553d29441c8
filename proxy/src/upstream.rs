//! The upstream call, driven by the gateway rather than by Pingora's proxy loop.
//!
//! Why: routing on the JSON `model` means reading the body before choosing the upstream, and Pingora
//! replays a consumed body only from its 64 KiB retry buffer (cloudflare/pingora #191, #349, #575, #780).
//! So the proxy reads the whole body (up to `max_body_bytes`), and this module writes it upstream over
//! a pooled HTTP/1.1 connection from Pingora's `TransportConnector` and reads the answer with its own
//! HTTP/1.1 response reader (`h1.rs`: each header parsed once, no case-preserving copy).
//!
//! Stale keep-alive connections: a pooled connection the upstream closed while idle fails on first use.
//! When a *reused* connection fails before any response byte arrives, the request is sent again on a
//! fresh connection (counted in `leaky_upstream_retries_total{reason="stale_connection"}`); a fresh
//! connection's failure is final, so a request is never sent twice to an upstream that answered.
//!
//! `TransportConnector` is the exchange's [`Transport`] (one attempt = [`send`]); idle connections are
//! aged on tokio's clock like the rest of the exchange.
//!
//! The first-byte wait is Pingora's timer wheel (`pingora_timeout::timeout`: 10 ms ticks on its own
//! thread), not tokio's: a tokio timer earlier than the one the worker parked with makes the time
//! driver wake the worker through its eventfd, one `write` and one extra `epoll_wait` per request.

use crate::balancer::{Deployment, Outcome, Probe};
use crate::headers::Returned;
use crate::metrics::count_retry;
use crate::transport::{Attempt, Failed, Transport};
use crate::wire::UpstreamHead;
use bytes::Bytes;
use http::Method;
use leaky_filters::{RejectKind, Rejection};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::{ErrorType, OrErr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub(crate) mod h1;

/// A response whose header has been read; the body is read by the caller.
pub struct Response {
    pub session: h1::Response<Stream>,
}

/// The exchange's transport in production: Pingora's connector and this module's pooled sessions.
impl Transport for TransportConnector {
    type Response = Response;

    fn send(
        &self,
        a: Attempt<'_>,
    ) -> impl std::future::Future<Output = Result<Response, Failed>> + Send {
        send(self, a)
    }

    fn head(response: &Response) -> Option<&http::response::Parts> {
        Some(response.session.head())
    }
}

/// One attempt on its deployment: connect (pooled, else fresh within `connect`), send, and wait at
/// most `first_byte` for the response header.
pub async fn send(transport: &TransportConnector, a: Attempt<'_>) -> Result<Response, Failed> {
    let Attempt {
        deployment: d,
        connect,
        first_byte,
        head: req,
        body,
        returned,
    } = a;
    let timed_out = || Failed {
        outcome: Outcome::Timeout,
        rejection: Rejection::new(
            RejectKind::GatewayTimeout,
            format!(
                "The upstream provider `{}` did not answer within {} ms.",
                d.provider,
                first_byte.as_millis()
            ),
        ),
    };
    if let Some(stream) = d.pool.take(Instant::now()) {
        match pingora_timeout::timeout(first_byte, exchange(stream, d, req, body, returned)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(session)) => return Ok(Response { session }),
            Ok(Err(e)) if is_stale(&e) => {
                count_retry(&d.provider, "stale_connection");
                tracing::debug!(upstream = %d.label, error = %e, "pooled connection was stale; retrying fresh");
            }
            Ok(Err(e)) => return Err(failed(d, &e)),
        }
    }
    // Boxed: Pingora's connect future (TCP, TLS, pool bookkeeping) is several KiB, most of this
    // attempt's future, and only a request without a pooled connection awaits it.
    let stream = match connect {
        Some(t) => match tokio::time::timeout(t, Box::pin(transport.new_stream(&d.peer))).await {
            Ok(r) => r,
            Err(_) => pingora::Error::e_explain(ErrorType::ConnectTimedout, "route connect_ms"),
        },
        None => Box::pin(transport.new_stream(&d.peer)).await,
    }
    .map_err(|e| failed(d, &e))?;
    match pingora_timeout::timeout(first_byte, exchange(stream, d, req, body, returned)).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(session)) => Ok(Response { session }),
        Ok(Err(e)) => Err(failed(d, &e)),
    }
}

/// Bodies up to this size go out in the same write as the header.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Sends the request and reads the response header (`h1.rs`).
///
/// The request's head and, up to 64 KiB, its body go out in one write (a larger body in a second
/// one): one `send`, one wake-up of the upstream. The request's framing is the gateway's own
/// (`Content-Length`, never chunked), and it forwards neither `Connection` nor upgrades.
async fn exchange(
    mut stream: Stream,
    up: &Deployment,
    req: &UpstreamHead,
    body: &Bytes,
    returned: Returned<'_>,
) -> pingora::Result<h1::Response<Stream>> {
    let coalesce = body.len() <= COALESCE_LIMIT;
    let wire = req.wire(if coalesce { body } else { &[] });
    let write = async {
        stream.write_all(&wire).await?;
        if !coalesce {
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    let written = match up.peer.options.write_timeout {
        Some(t) => tokio::time::timeout(t, write).await.map_err(|_| {
            pingora::Error::explain(ErrorType::WriteTimedout, "writing the upstream request")
        })?,
        None => write.await,
    };
    written.or_err(ErrorType::WriteError, "writing the upstream request")?;
    let dropped = |name: &[u8]| returned.drops(name);
    h1::Response::read(stream, *req.method() == Method::HEAD, dropped).await
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

/// A connection-level failure (connect refused or timed out, reset before the response header): the
/// request may not have been processed, and another deployment may well answer.
fn failed(d: &Deployment, e: &pingora::Error) -> Failed {
    let timeout = matches!(e.etype(), ErrorType::ConnectTimedout);
    if matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    ) {
        // Not a passing fault: the provider's certificate is not trusted (or ours refused), and every
        // attempt will fail the same way until the provider's `tls` settings change.
        tracing::warn!(upstream = %d.label, error = %e, "TLS handshake with the upstream failed; check the provider's `tls` (ca, client_cert)");
    } else {
        tracing::debug!(upstream = %d.label, error = %e, "upstream attempt failed");
    }
    let (kind, what) = if timeout {
        (
            RejectKind::GatewayTimeout,
            "did not accept a connection in time",
        )
    } else {
        (RejectKind::BadGateway, "could not be reached")
    };
    Failed {
        outcome: Outcome::Connect,
        rejection: Rejection::new(
            kind,
            format!("The upstream provider `{}` {what}.", d.provider),
        ),
    }
}

/// An active health check: `GET {path}` on a fresh connection; healthy when it answers 2xx in time.
pub async fn probe(transport: &TransportConnector, p: &Probe, timeout: Duration) -> bool {
    let run = async {
        let stream = transport.new_stream(&p.peer).await.ok()?;
        let mut session = HttpSession::new_with_options(stream, &p.peer);
        let mut req = RequestHeader::build(Method::GET, p.check.path.as_bytes(), Some(3)).ok()?;
        req.insert_header(http::header::HOST, p.host.clone()).ok()?;
        if let Some((name, value)) = &p.auth {
            req.insert_header(name.clone(), value.clone()).ok()?;
        }
        req.insert_header(http::header::CONNECTION, "close").ok()?;
        session.write_request_header(Box::new(req)).await.ok()?;
        session.finish_body().await.ok()?;
        session.read_response().await.ok()?;
        session.get_status().map(|s| s.is_success())
    };
    matches!(tokio::time::timeout(timeout, run).await, Ok(Some(true)))
}

/// Returns a finished response's connection to the pool when it can be reused.
pub fn release(up: &Deployment, session: h1::Response<Stream>) {
    if let Some(stream) = session.reuse() {
        up.pool.put(stream, Instant::now());
    }
}
