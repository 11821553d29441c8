//! HTTP/2 connections (ALPN `h2` on a TLS listener): one Pingora h2 server session per stream, served
//! by the same app as HTTP/1.1, under the listener's limits.
//!
//! Pingora's own h2 accept loop is private to it, and it starts the h2 handshake with no deadline: a
//! client that finishes TLS and never sends the connection preface would hold its connection slot
//! forever. This loop bounds the preface by the connection's head deadline, closes a connection idle
//! (no stream in flight) for `keepalive_timeout`, caps the head size with h2's
//! `max_header_list_size`, answers a server shutdown with GOAWAY and drains, and closes a connection
//! after too many rejected (malformed) streams.

use super::ConnLimits;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{default_h2_options, handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Rejected streams after which the connection is closed (Pingora's own per-connection budget).
const MAX_REJECTED_STREAMS: usize = 32;

/// Streams in flight on one connection; the idle timer runs only while there are none.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a stream's task for as long as it is served.
struct InFlight(Arc<Active>);

impl Active {
    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once no stream has been in flight for `timeout`.
    async fn idle_for(&self, timeout: std::time::Duration) {
        loop {
            while self.count.load(Ordering::Relaxed) != 0 {
                self.idle.notified().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                // A stream started and ended meanwhile: wait a whole period again.
                _ = self.idle.notified() => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.idle.notify_one();
    }
}

/// What Pingora's h2 sessions of this connection share about it (TLS, timing, socket).
fn digest(stream: &Stream) -> Arc<Digest> {
    Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    })
}

/// Serves an h2 connection until the client or the server closes it. `deadline`: when the client's
/// connection preface must have arrived (the listener's head deadline).
pub(super) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    limits: &ConnLimits,
    deadline: Instant,
) {
    let digest = digest(&stream);
    let mut options = app.h2_options().unwrap_or_else(default_h2_options);
    options.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let mut conn = match tokio::time::timeout_at(deadline, handshake(stream, Some(options))).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return tracing::debug!(error = %e, "h2 handshake failed"),
        Err(_) => return tracing::debug!("no h2 preface before the head deadline"),
    };
    let active = Arc::new(Active::default());
    let mut stop = shutdown.clone();
    let mut draining = false;
    let mut rejected = 0;
    loop {
        if !draining && *stop.borrow() {
            conn.graceful_shutdown();
            draining = true;
        }
        let next = if draining {
            HttpSession::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The shutdown watch is gone: nothing will tell this connection to stop.
                        conn.graceful_shutdown();
                        draining = true;
                    }
                    continue;
                }
                next = HttpSession::from_h2_conn(&mut conn, digest.clone()) => next,
                _ = active.idle_for(limits.keepalive_timeout) => return,
            }
        };
        match next {
            Ok(Some(H2Accept::Session(session))) => {
                let in_flight = active.start();
                let (app, shutdown) = (app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    app.process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                });
            }
            Ok(Some(H2Accept::Rejected)) if rejected < MAX_REJECTED_STREAMS => rejected += 1,
            // Closed by the client, drained after GOAWAY, a connection error, or too many rejects.
            Ok(Some(H2Accept::Rejected)) | Ok(None) | Err(_) => return,
        }
    }
}
