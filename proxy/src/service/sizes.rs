//! Pins the size of the request path's futures (issue 19).
//!
//! A request's futures are moved (copied whole) when they are made and boxed: `request_filter`'s
//! (`async_trait`, boxed on every request) and the listener's per-request future (`serve_h1`,
//! awaited in the connection's loop; through Pingora's `HttpServerApp::process_new_http` it was a
//! boxed 13 KiB holding Pingora's whole proxy loop, which HTTP/2 sessions still take). Every KiB
//! moved is `memcpy` work on every request: callgrind counted 38,000 instructions/request of it
//! (`loadtests/results/bench-profile.md`). The bounds are this profile's measured sizes plus under
//! a tenth; a change that inlines a large future again (the cache branch, Pingora's connect, an
//! unboxed `Ctx`, Pingora's proxy loop) fails here. Raise a bound only with
//! `./loadtests/bench --only cost` figures saying the bytes are worth it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use super::{Gateway, GatewayApp, Session};
use crate::ctx::Ctx;
use crate::listener::H1Serve;
use crate::reload::ConfigState;
use pingora::connectors::TransportConnector;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::proxy::ProxyHttp;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use std::mem::{size_of, size_of_val};
use std::sync::Arc;

/// `request_filter`'s boxed future in the dev profile: measured 3,760 bytes (the release build's
/// are smaller); 4,944 with Pingora's client session for the upstream answer, 12,928 with the
/// cache branch and Pingora's connect inline.
const REQUEST_FILTER_MAX: usize = 4_100;
/// The listener's per-request future for HTTP/1, `GatewayApp::serve_h1`, in the dev profile:
/// measured 5,608 bytes, most of it Pingora's `Session`; through Pingora's `process_new_http` it
/// was 13,456 (its own proxy loop), 15,592 with `Ctx` inline.
const SERVE_H1_MAX: usize = 6_200;

const CONFIG: &str = "server:\n  listen: 127.0.0.1:18080\n  admin_listen: 127.0.0.1:19090\n\
providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n";

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let doc =
        crate::document::ConfigDocument::from_files(&path, leaky_config::load(&path).unwrap());
    let boot = crate::bootstrap::Bootstrap::of(&doc.config.server);
    let background = crate::background::Background::start().unwrap();
    Gateway::new(ConfigState::new(doc, boot, &background).unwrap())
}

/// One end of a loopback connection, as Pingora's sessions take it.
async fn stream() -> (L4Stream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (L4Stream::from(server), client)
}

/// The size of what `f` returns (an `async fn`'s future, by its function item), without calling it.
fn returns2<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
    size_of::<R>()
}
fn returns4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
    size_of::<R>()
}
fn returns6<A, B, C, D, E, F, R>(_: impl FnOnce(A, B, C, D, E, F) -> R) -> usize {
    size_of::<R>()
}

#[tokio::test]
async fn the_boxed_request_futures_stay_small() {
    let gw = gateway();
    let (server, _client) = stream().await;
    let mut session = Session::new_h1(Box::new(server));
    let mut ctx = gw.new_ctx();
    let filter = gw.request_filter(&mut session, &mut ctx);
    let filter_size = size_of_val(&*filter);
    drop(filter);

    drop(gw);

    let app = Arc::new(GatewayApp::new(&Arc::new(ServerConf::default()), gateway));
    let (server, _client) = stream().await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let h1 = app.serve_h1(Box::new(server), None, Default::default(), &shutdown);
    let h1_size = size_of_val(&h1);
    drop(h1);

    eprintln!("request_filter future: {filter_size} bytes; serve_h1 future: {h1_size} bytes");
    assert!(
        filter_size <= REQUEST_FILTER_MAX,
        "request_filter's future is {filter_size} bytes (bound {REQUEST_FILTER_MAX})"
    );
    assert!(
        h1_size <= SERVE_H1_MAX,
        "serve_h1's future is {h1_size} bytes (bound {SERVE_H1_MAX})"
    );
}

/// Relative checks, true in every profile: each boxed branch is larger than what awaits it, so
/// it cannot be inline.
#[test]
fn the_rare_large_branches_are_boxed() {
    assert_eq!(
        size_of::<<Gateway as ProxyHttp>::CTX>(),
        size_of::<usize>(),
        "the per-request context is a pointer"
    );
    assert!(size_of::<Ctx>() > 4 * size_of::<usize>());
    let handle = returns4(Gateway::handle);
    let cached = returns6(Gateway::serve_cached);
    assert!(
        handle < cached,
        "handle's future ({handle} bytes) holds the cache branch's ({cached} bytes) inline"
    );
    let send = returns2(crate::upstream::send);
    let connect = returns2(TransportConnector::new_stream::<HttpPeer>);
    assert!(
        send < connect,
        "an attempt's future ({send} bytes) holds Pingora's connect ({connect} bytes) inline"
    );
}
