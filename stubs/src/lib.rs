//! Realistic stubs of the OpenAI, Gemini and Qwen (DashScope) HTTP APIs.
//!
//! Each provider is an independent [`axum::Router`]; [`serve`] and [`bind`]
//! run all three on their own listeners. See `stubs/README.md`.

mod common;
pub mod gemini;
mod gen;
pub mod openai;
pub mod qwen;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// Whether the stubs simulate model latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Latency {
    /// Time to first token 150–400 ms, 10–30 ms between tokens (seeded
    /// jitter); non-streaming responses wait for the whole (≤ 2 s) duration.
    #[default]
    Realistic,
    /// No artificial delays at all (tests, benchmarks).
    Off,
}

/// Where to serve the three stubs.
#[derive(Clone, Debug)]
pub struct StubsConfig {
    pub openai: SocketAddr,
    pub gemini: SocketAddr,
    pub qwen: SocketAddr,
    pub latency: Latency,
}

impl Default for StubsConfig {
    fn default() -> Self {
        StubsConfig {
            openai: SocketAddr::from(([127, 0, 0, 1], 18001)),
            gemini: SocketAddr::from(([127, 0, 0, 1], 18002)),
            qwen: SocketAddr::from(([127, 0, 0, 1], 18003)),
            latency: Latency::Realistic,
        }
    }
}

/// Actual addresses of bound stubs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundStubs {
    pub openai: SocketAddr,
    pub gemini: SocketAddr,
    pub qwen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StubsError {
    #[error("cannot bind the {provider} stub to {addr}: {source}")]
    Bind {
        provider: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {provider} stub failed: {source}")]
    Serve {
        provider: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The OpenAI stub (`/v1/...`).
pub fn openai_router(latency: Latency) -> axum::Router {
    openai::router(latency)
}

/// The Gemini stub (`/v1beta/...`, including `/v1beta/openai/...`).
pub fn gemini_router(latency: Latency) -> axum::Router {
    gemini::router(latency)
}

/// The Qwen / DashScope stub (`/api/v1/...` and `/compatible-mode/v1/...`).
pub fn qwen_router(latency: Latency) -> axum::Router {
    qwen::router(latency)
}

async fn bind_one(
    provider: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StubsError> {
    let err = |source| StubsError::Bind {
        provider,
        addr,
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

struct Listeners {
    openai: TcpListener,
    gemini: TcpListener,
    qwen: TcpListener,
}

async fn bind_all(cfg: &StubsConfig) -> Result<(Listeners, BoundStubs), StubsError> {
    let (openai, oa) = bind_one("openai", cfg.openai).await?;
    let (gemini, ga) = bind_one("gemini", cfg.gemini).await?;
    let (qwen, qa) = bind_one("qwen", cfg.qwen).await?;
    Ok((
        Listeners {
            openai,
            gemini,
            qwen,
        },
        BoundStubs {
            openai: oa,
            gemini: ga,
            qwen: qa,
        },
    ))
}

async fn run<F>(
    provider: &'static str,
    l: TcpListener,
    router: axum::Router,
    shutdown: F,
) -> Result<(), StubsError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let l = l.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(l, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| StubsError::Serve { provider, source })
}

/// Binds the three listeners (port 0 allowed) and returns their actual
/// addresses plus a future that serves them forever (drop or abort it to stop).
pub async fn bind(
    cfg: StubsConfig,
) -> Result<(BoundStubs, impl Future<Output = ()> + Send), StubsError> {
    let (l, bound) = bind_all(&cfg).await?;
    let latency = cfg.latency;
    let fut = async move {
        let never = futures::future::pending::<()>;
        let (a, b, c) = tokio::join!(
            run("openai", l.openai, openai_router(latency), never()),
            run("gemini", l.gemini, gemini_router(latency), never()),
            run("qwen", l.qwen, qwen_router(latency), never()),
        );
        for r in [a, b, c] {
            if let Err(e) = r {
                tracing::error!(error = %e, "stub server stopped");
            }
        }
    };
    Ok((bound, fut))
}

/// Binds all three stubs, then serves until `shutdown` resolves (graceful:
/// in-flight requests finish). Returns an error (not a panic) if a bind fails.
pub async fn serve(
    cfg: StubsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StubsError> {
    let (l, bound) = bind_all(&cfg).await?;
    tracing::info!(openai = %bound.openai, gemini = %bound.gemini, qwen = %bound.qwen, "provider stubs listening");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signal = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let trigger = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let latency = cfg.latency;
    let (_, a, b, c) = tokio::join!(
        trigger,
        run(
            "openai",
            l.openai,
            openai_router(latency),
            signal(rx.clone())
        ),
        run(
            "gemini",
            l.gemini,
            gemini_router(latency),
            signal(rx.clone())
        ),
        run("qwen", l.qwen, qwen_router(latency), signal(rx)),
    );
    a?;
    b?;
    c?;
    Ok(())
}
