//! Realistic stubs of the OpenAI, Gemini and Qwen (DashScope) HTTP APIs, and
//! of a Stripe-like payment provider ([`payment`]).
//!
//! Each provider is an independent [`axum::Router`]; [`serve`] and [`bind`]
//! run all three (plus the payment stub when [`StubsConfig::payment`] is set)
//! on their own listeners. See `stubs/README.md`.

mod common;
pub mod control;
pub mod gemini;
mod gen;
pub mod openai;
pub mod payment;
pub mod qwen;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use common::Throttle;
pub use control::{Clock, FaultPlan, Hang, ManualClock, RateLimits, SystemClock};

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpSocket};

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

/// One value per provider stub.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerProvider<T> {
    pub openai: T,
    pub gemini: T,
    pub qwen: T,
}

impl<T: Clone> PerProvider<T> {
    /// The same value for every stub.
    pub fn all(v: T) -> Self {
        PerProvider {
            openai: v.clone(),
            gemini: v.clone(),
            qwen: v,
        }
    }
}

/// Where to serve the three stubs, and how they behave.
#[derive(Clone, Debug)]
pub struct StubsConfig {
    pub openai: SocketAddr,
    pub gemini: SocketAddr,
    pub qwen: SocketAddr,
    pub latency: Latency,
    /// Injected faults per stub (default: none).
    pub faults: PerProvider<FaultPlan>,
    /// Provider-side limits per key, per stub (default: 10,000,000 RPM and
    /// 1,000,000,000 TPM, above any benchmark).
    pub limits: PerProvider<RateLimits>,
    /// Where to serve the payment stub; `None` (the default, so tests that
    /// bind the model stubs on port 0 never collide on 18004) serves none.
    /// `leaky-tokens stubs` sets it to 127.0.0.1:18004.
    pub payment: Option<SocketAddr>,
    /// Faults, webhook retry policy and latency of the payment stub.
    pub payment_config: payment::PaymentConfig,
}

impl Default for StubsConfig {
    fn default() -> Self {
        StubsConfig {
            openai: SocketAddr::from(([127, 0, 0, 1], 18001)),
            gemini: SocketAddr::from(([127, 0, 0, 1], 18002)),
            qwen: SocketAddr::from(([127, 0, 0, 1], 18003)),
            latency: Latency::Realistic,
            faults: PerProvider::default(),
            limits: PerProvider::default(),
            payment: None,
            payment_config: payment::PaymentConfig::default(),
        }
    }
}

/// Behaviour of one stub router.
#[derive(Clone, Debug)]
pub struct StubOptions {
    pub latency: Latency,
    pub faults: FaultPlan,
    pub limits: RateLimits,
    /// Clock of the rate limiter (tests use [`ManualClock`]).
    pub clock: Arc<dyn Clock>,
}

impl StubOptions {
    /// `latency`, no faults, default limits, the system clock.
    pub fn new(latency: Latency) -> Self {
        StubOptions {
            latency,
            faults: FaultPlan::default(),
            limits: RateLimits::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Default for StubOptions {
    fn default() -> Self {
        StubOptions::new(Latency::Realistic)
    }
}

impl StubsConfig {
    fn options(&self, faults: &FaultPlan, limits: RateLimits) -> StubOptions {
        StubOptions {
            faults: faults.clone(),
            limits,
            ..StubOptions::new(self.latency)
        }
    }
    fn routers(&self) -> (axum::Router, axum::Router, axum::Router) {
        (
            openai::router_with(&self.options(&self.faults.openai, self.limits.openai)),
            gemini::router_with(&self.options(&self.faults.gemini, self.limits.gemini)),
            qwen::router_with(&self.options(&self.faults.qwen, self.limits.qwen)),
        )
    }
}

/// Actual addresses of bound stubs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundStubs {
    pub openai: SocketAddr,
    pub gemini: SocketAddr,
    pub qwen: SocketAddr,
    /// The payment stub, when [`StubsConfig::payment`] asked for one.
    pub payment: Option<SocketAddr>,
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

/// The Gemini stub (`/v1beta/...` and `/v1/...`, plus `/v1beta/openai/...`).
pub fn gemini_router(latency: Latency) -> axum::Router {
    gemini::router(latency)
}

/// The Qwen / DashScope stub (`/api/v1/...` and `/compatible-mode/v1/...`).
pub fn qwen_router(latency: Latency) -> axum::Router {
    qwen::router(latency)
}

/// The OpenAI stub with faults, limits and a clock.
pub fn openai_router_with(opts: &StubOptions) -> axum::Router {
    openai::router_with(opts)
}

/// The Gemini stub with faults, limits and a clock.
pub fn gemini_router_with(opts: &StubOptions) -> axum::Router {
    gemini::router_with(opts)
}

/// The Qwen stub with faults, limits and a clock.
pub fn qwen_router_with(opts: &StubOptions) -> axum::Router {
    qwen::router_with(opts)
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
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let l = socket.listen(ACCEPT_BACKLOG).map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

/// The listen backlog (the kernel caps it at `net.core.somaxconn`). tokio's `TcpListener::bind`
/// asks for 1,024: 1,000 clients connecting at once (the bench's streams) overflowed the queue, and
/// the dropped SYNs came back a second later, so the direct baseline started its streams a second
/// late and spread out. Pingora's listeners ask for 65,535.
const ACCEPT_BACKLOG: u32 = 65_535;

struct Listeners {
    openai: TcpListener,
    gemini: TcpListener,
    qwen: TcpListener,
    payment: Option<TcpListener>,
}

async fn bind_all(cfg: &StubsConfig) -> Result<(Listeners, BoundStubs), StubsError> {
    let (openai, oa) = bind_one("openai", cfg.openai).await?;
    let (gemini, ga) = bind_one("gemini", cfg.gemini).await?;
    let (qwen, qa) = bind_one("qwen", cfg.qwen).await?;
    let (payment, pa) = match cfg.payment {
        Some(addr) => {
            let (l, a) = bind_one("payment", addr).await?;
            (Some(l), Some(a))
        }
        None => (None, None),
    };
    Ok((
        Listeners {
            openai,
            gemini,
            qwen,
            payment,
        },
        BoundStubs {
            openai: oa,
            gemini: ga,
            qwen: qa,
            payment: pa,
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

/// Serves the payment stub on `l` if there is one; otherwise waits for
/// `shutdown` so the caller's `join!` is unchanged.
async fn run_payment<F>(
    l: Option<TcpListener>,
    cfg: &payment::PaymentConfig,
    shutdown: F,
) -> Result<(), StubsError>
where
    F: Future<Output = ()> + Send + 'static,
{
    match l {
        Some(l) => run("payment", l, payment::router(cfg), shutdown).await,
        None => {
            shutdown.await;
            Ok(())
        }
    }
}

/// Binds the three listeners (port 0 allowed) and returns their actual
/// addresses plus a future that serves them forever (drop or abort it to stop).
pub async fn bind(
    cfg: StubsConfig,
) -> Result<(BoundStubs, impl Future<Output = ()> + Send), StubsError> {
    let (l, bound) = bind_all(&cfg).await?;
    tokens::warm_up();
    let (ro, rg, rq) = cfg.routers();
    let fut = async move {
        let never = futures::future::pending::<()>;
        let (a, b, c, d) = tokio::join!(
            run("openai", l.openai, ro, never()),
            run("gemini", l.gemini, rg, never()),
            run("qwen", l.qwen, rq, never()),
            run_payment(l.payment, &cfg.payment_config, never()),
        );
        for r in [a, b, c, d] {
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
    tracing::info!(openai = %bound.openai, gemini = %bound.gemini, qwen = %bound.qwen, payment = ?bound.payment, "provider stubs listening");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signal = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let trigger = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    tokens::warm_up();
    let (ro, rg, rq) = cfg.routers();
    let (_, a, b, c, d) = tokio::join!(
        trigger,
        run("openai", l.openai, ro, signal(rx.clone())),
        run("gemini", l.gemini, rg, signal(rx.clone())),
        run("qwen", l.qwen, rq, signal(rx.clone())),
        run_payment(l.payment, &cfg.payment_config, signal(rx)),
    );
    a?;
    b?;
    c?;
    d?;
    Ok(())
}
