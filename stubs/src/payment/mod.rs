//! A Stripe-like payment provider stub (port 18004 under `leaky-tokens
//! stubs`): payment intents with manual capture (authorize, capture, cancel),
//! refunds, idempotency keys, signed webhooks delivered at least once and out
//! of order, and fault injection (declines, 5xx, timeouts, apply-then-fail,
//! duplicate and lost webhooks). The contract is in `stubs/README.md`
//! ("Payment stub").

mod api;
mod control;
mod faults;
mod idempotency;
mod model;
mod params;
mod signature;
mod store;
mod webhooks;

pub use faults::{PaymentFaults, PaymentOp, H_PAYMENT_FAULT};
pub use model::{Event, EventData, IntentStatus, PaymentIntent, Refund};
pub use signature::{sign, verify_signature, SignatureError, SIGNATURE_HEADER};
pub use webhooks::{backoff, delivery_delay, Delivery, WebhookConfig};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;

use crate::common::Metrics;
use crate::gen::mix;
use crate::Latency;

/// Default address of the payment stub.
pub const DEFAULT_PORT: u16 = 18004;

/// Behaviour of the payment stub.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PaymentConfig {
    /// `Realistic`: each API call takes a seeded 80–300 ms, like a real
    /// provider; `Off`: answers at once.
    pub latency: Latency,
    /// Faults armed at start (and restored by `POST /_stub/reset`).
    pub faults: PaymentFaults,
    pub webhooks: WebhookConfig,
}

/// State shared by the payment stub's handlers.
pub(crate) struct Ctx {
    cfg: PaymentConfig,
    ids: store::Ids,
    store: Mutex<store::Store>,
    faults: Mutex<PaymentFaults>,
    keys: idempotency::Keys,
    webhooks: webhooks::Webhooks,
    metrics: Metrics,
    calls: AtomicU64,
}

impl Ctx {
    fn new(cfg: &PaymentConfig) -> Arc<Self> {
        // Ids differ between runs (a restarted stub must not reuse ids a
        // client may still hold); the webhook delays stay seeded.
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Arc::new(Ctx {
            cfg: cfg.clone(),
            ids: store::Ids::new(mix(boot)),
            store: Mutex::new(store::Store::default()),
            faults: Mutex::new(cfg.faults.clone()),
            keys: idempotency::Keys::default(),
            webhooks: webhooks::Webhooks::new(cfg.webhooks.clone()),
            metrics: Metrics::default(),
            calls: AtomicU64::new(0),
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, PaymentFaults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulated provider latency before an API call (seeded by call number).
    async fn pace(&self) {
        if self.cfg.latency == Latency::Realistic {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            let jitter = mix(self.cfg.webhooks.seed ^ mix(n)) % 220;
            tokio::time::sleep(Duration::from_millis(80 + jitter)).await;
        }
    }
}

/// The payment stub's router.
pub fn router(cfg: &PaymentConfig) -> Router {
    let ctx = Ctx::new(cfg);
    Router::new()
        .route("/v1/payment_intents", post(api::create))
        .route("/v1/payment_intents/{id}", get(api::retrieve))
        .route("/v1/payment_intents/{id}/capture", post(api::capture))
        .route("/v1/payment_intents/{id}/cancel", post(api::cancel))
        .route("/v1/refunds", post(api::refund).get(api::list_refunds))
        .route("/v1/webhook_endpoints", post(api::create_endpoint))
        .route(
            "/_stub/faults",
            post(control::set_faults).get(control::get_faults),
        )
        .route("/_stub/state", get(control::state))
        .route("/_stub/reset", post(control::reset))
        .route("/healthz", get(crate::common::healthz))
        .route("/metrics", get(control::metrics))
        .fallback(api::unknown_url)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            control::observe,
        ))
        .with_state(ctx)
}
