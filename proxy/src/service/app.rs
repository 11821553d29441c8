//! The proxy listener's app: HTTP/1 requests go straight to the [`Gateway`]'s phases; everything
//! else (HTTP/2 sessions, Pingora's options and cleanup) goes through Pingora's `HttpProxy`.
//!
//! Why not Pingora's `HttpProxy` for HTTP/1 too: its per-request entry,
//! `HttpServerApp::process_new_http`, is an `async_trait` future of about 13 KiB (Pingora's whole
//! proxy loop: cache, upstream phases, retries), boxed and so copied whole on every request, though
//! the gateway answers every request in `request_filter` and never reaches that loop (issue 19:
//! 13,400 instructions/request of `memcpy`). [`GatewayApp::serve_h1`] runs the same steps Pingora
//! runs for a request that `request_filter` answers, in the same order, and nothing else:
//!
//! 1. read the request head (the listener has it in memory already: no socket read); a head
//!    Pingora cannot take → `400`, a `CONNECT` → `405`, both closing the connection;
//! 2. `request_filter` (which answers every request), then `logging`;
//! 3. on an error, `fail_to_proxy` (which may answer), an error log, `logging`, and the connection
//!    kept only when `fail_to_proxy` says so;
//! 4. `finish`: the connection goes back to the listener for the next request when the answer
//!    allows keep-alive.
//!
//! What the gateway's `HttpProxy` had and this leaves out, on purpose: the disabled response
//! compression module that `ProxyHttp::init_downstream_modules` adds by default (level 0, no
//! decompression: it changed nothing), and the phases after `request_filter`.

use super::Gateway;
use crate::listener::H1Serve;
use async_trait::async_trait;
use bytes::BytesMut;
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::modules::http::HttpModules;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::Arc;

/// The proxy listener's app (see the module docs).
pub struct GatewayApp {
    /// Serves HTTP/1 requests.
    gateway: Gateway,
    /// No modules: built once so each request's empty module context needs no index of its own.
    modules: HttpModules,
    /// Serves HTTP/2 sessions, with a gateway of its own on the same config state.
    h2: Arc<HttpProxy<Gateway>>,
}

impl GatewayApp {
    pub fn new(conf: &Arc<ServerConf>, make: impl Fn() -> Gateway) -> Self {
        GatewayApp {
            gateway: make(),
            modules: HttpModules::new(),
            h2: Arc::new(pingora::proxy::http_proxy(conf, make())),
        }
    }

    /// One HTTP/1 request (steps 1–4 of the module docs). `None`: the connection is done.
    async fn request(&self, mut session: Session) -> Option<ReusedHttpStream> {
        let gateway = &self.gateway;
        match session.downstream_session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(mut e) => {
                e.as_down();
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    tracing::debug!(error = %e, "bad request head");
                    let _ = session.downstream_session.respond_error(400).await;
                } else {
                    tracing::debug!(error = %e, "reading the request head failed");
                }
                session.downstream_session.shutdown().await;
                return None;
            }
        }
        if session.req_header().method == Method::CONNECT {
            let _ = session.downstream_session.respond_error(405).await;
            session.downstream_session.shutdown().await;
            return None;
        }
        let mut ctx = gateway.new_ctx();
        let e = match gateway.request_filter(&mut session, &mut ctx).await {
            Ok(true) => {
                gateway.logging(&mut session, None, &mut ctx).await;
                return finish(session).await;
            }
            Ok(false) => Error::explain(
                ErrorType::InternalError,
                "request_filter left the request unanswered",
            ),
            Err(e) => e,
        };
        let failed = gateway.fail_to_proxy(&mut session, &e, &mut ctx).await;
        // A client that left or sent a broken body is the client's affair, not the operator's.
        if e.esource() == &ErrorSource::Downstream {
            tracing::debug!(
                "the client's request failed: {e}, status: {}, {}",
                failed.error_code,
                session.downstream_session.request_summary()
            );
        } else {
            tracing::error!(
                "Fail to filter request: {e}, status: {}, {}",
                failed.error_code,
                session.downstream_session.request_summary()
            );
        }
        gateway.logging(&mut session, Some(&e), &mut ctx).await;
        session.downstream_session.on_proxy_failure(e);
        if failed.can_reuse_downstream {
            finish(session).await
        } else {
            None
        }
    }
}

/// The connection back for its next request, with its keep-alive settings, when the answer allows.
async fn finish(session: Session) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session.downstream_session);
    let reusable = session.downstream_session.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
}

impl H1Serve for GatewayApp {
    async fn serve_h1(
        self: &Arc<Self>,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let mut session = Session::new_h1_with_modules(stream, &self.modules);
        let downstream = &mut *session.downstream_session;
        if let Some(s) = settings {
            s.apply_to_session(downstream);
        }
        downstream.set_pipelined_prefix(prefix);
        if *shutdown.borrow() {
            downstream.set_keepalive(None);
        }
        self.request(session).await
    }
}

#[async_trait]
impl HttpServerApp for GatewayApp {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // HTTP/2 (`listener/h2.rs`); the listener's HTTP/1 requests take `serve_h1`.
        self.h2.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.h2.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.h2.server_options()
    }

    async fn http_cleanup(&self) {
        self.h2.http_cleanup().await;
    }
}
