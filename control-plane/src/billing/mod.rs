//! Bounded context "billing" (Postgres schema `billing`): token purchases, run as persisted sagas by
//! the orchestrator in [`saga`], and the payment provider's webhooks.
//!
//! The purchase saga ([`purchase`]) reaches the payment provider, the ledger and the data plane's
//! balance mirror only through the traits of [`ports`]; [`payments_http`] implements the provider's side
//! over HTTP, [`adapters`] the ledger's and the Redis mirror's, and [`spawn`] wires them into an
//! `admin-api` process with the balance reconciler ([`reconcile`]) and billing's metrics ([`metrics`]). The API ([`api`]) creates purchases (idempotent by `Idempotency-Key`, audited), shows them
//! and the sagas with their step history, and takes webhooks ([`webhooks`]). Every purchase that
//! finishes writes `purchase.completed` / `purchase.compensated` / `purchase.needs_attention` to the
//! outbox (topic [`purchase::TOPIC`]) in the transaction of its last step.
//!
//! Subscriptions ([`subscription`]: the saga; [`subscription_store`]: plans, the API's writes, the
//! renewal job; [`subscription_api`]: routes) run on the same engine as a second saga kind.

pub mod adapters;
pub mod api;
pub mod metrics;
pub mod payments_http;
pub mod ports;
pub mod purchase;
pub mod reconcile;
pub mod saga;
pub mod store;
pub mod subscription;
pub mod subscription_api;
pub mod subscription_store;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;

use crate::http::ApiState;

/// The OpenAPI paths of billing: purchases, sagas, webhooks, plans and subscriptions.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api::openapi();
    doc.merge(subscription_api::openapi());
    doc
}

/// Billing's routes (mounted under `/v1`), reading `settings`.
pub fn routes(settings: Arc<Settings>) -> axum::Router<ApiState> {
    api::routes(settings.clone()).merge(subscription_api::routes(settings))
}
pub use saga::{needs_attention_total, Engine, KillPoint, KillWhen, Policy, Ports, SagaState};

/// Billing's settings: price, currency, credit validity, the webhook secret.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `LEAKY_BILLING_PRICE_PER_MILLION_TOKENS_CENTS` (default 200: $2 per million tokens).
    pub price_per_million_tokens_cents: i64,
    pub currency: String,
    /// How long purchased tokens stay valid (`LEAKY_BILLING_CREDIT_VALIDITY_DAYS`, default 365).
    pub credit_validity: Duration,
    /// How long a purchase saga may run forward before a failing step compensates instead of retrying.
    pub saga_deadline: Duration,
    /// The webhooks' HMAC secret (`LEAKY_PAYMENTS_WEBHOOK_SECRET`).
    pub webhook_secret: String,
    /// How far a webhook's signed timestamp may be from now (300 s).
    pub webhook_tolerance_secs: i64,
}

/// The development secret the payment stub signs with unless both are configured otherwise.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_leaky_dev";

impl Default for Settings {
    fn default() -> Self {
        Self {
            price_per_million_tokens_cents: 200,
            currency: "usd".to_owned(),
            credit_validity: Duration::days(365),
            saga_deadline: Duration::hours(1),
            webhook_secret: DEV_WEBHOOK_SECRET.to_owned(),
            webhook_tolerance_secs: 300,
        }
    }
}

impl Settings {
    /// The defaults, overridden by `LEAKY_BILLING_*` / `LEAKY_PAYMENTS_WEBHOOK_SECRET`.
    pub fn from_env() -> Self {
        let mut s = Self::default();
        let int = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<i64>().ok());
        if let Some(p) = int("LEAKY_BILLING_PRICE_PER_MILLION_TOKENS_CENTS").filter(|p| *p > 0) {
            s.price_per_million_tokens_cents = p;
        }
        if let Some(d) = int("LEAKY_BILLING_CREDIT_VALIDITY_DAYS").filter(|d| *d > 0) {
            s.credit_validity = Duration::days(d);
        }
        if let Ok(secret) = std::env::var("LEAKY_PAYMENTS_WEBHOOK_SECRET") {
            if !secret.is_empty() {
                s.webhook_secret = secret;
            }
        }
        s
    }
}

/// What `leaky-tokens control-plane` passes to billing (flags with env fallbacks in `src/main.rs`).
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub settings: Settings,
    pub payments: payments_http::HttpPaymentsConfig,
    pub policy: Policy,
}

impl Default for BillingConfig {
    /// The defaults, overridden by the environment (`LEAKY_BILLING_*`, `LEAKY_PAYMENTS_*`).
    fn default() -> Self {
        Self {
            settings: Settings::from_env(),
            payments: payments_http::HttpPaymentsConfig::from_env(),
            policy: policy_from_env(),
        }
    }
}

/// The default [`Policy`], its concurrency overridden by `LEAKY_SAGA_CONCURRENCY` (1..=256).
fn policy_from_env() -> Policy {
    let mut p = Policy::default();
    let n = std::env::var("LEAKY_SAGA_CONCURRENCY").ok();
    if let Some(n) = n
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=256).contains(n))
    {
        p.concurrency = n;
    }
    p
}

/// Spawns an admin-api process's billing work: the saga worker with the real ports (returned first,
/// so shutdown can wait for its drain) and, with a Redis URL, the balance reconciler. Without one, a
/// start-up warning says the mirror steps will be recorded as skipped.
pub fn spawn(
    state: &ApiState,
    config: &BillingConfig,
    redis_url: Option<&str>,
) -> (
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let mirror = match redis_url.map(adapters::RedisMirror::new) {
        Some(Ok(m)) => Some(Arc::new(m)),
        Some(Err(e)) => {
            tracing::error!(error = %e, "billing: bad --redis-url; balance mirror steps are skipped");
            None
        }
        None => {
            tracing::warn!("billing: no --redis-url; purchases credit the ledger but the mirror steps are recorded as skipped (no data-plane mirror configured) and no reconciler runs");
            None
        }
    };
    let collector = Arc::new(metrics::BillingMetrics::default());
    state.stats.add_collector(collector.clone());
    let reconcile = mirror.clone().map(|m| {
        let stats = collector.reconcile.clone();
        let r = reconcile::Reconciler::new(state.pool.clone(), m, stats);
        tokio::spawn(reconcile_when_migrated(state.clone(), r))
    });
    let saga = match payments_http::HttpPayments::new(config.payments.clone()) {
        Ok(payments) => {
            let ports = adapters::ports(payments, state.pool.clone(), mirror);
            tokio::spawn(worker(state.clone(), ports, config.policy.clone()))
        }
        Err(e) => {
            tracing::error!(error = %e, "billing: no payment client; purchases stay pending");
            tokio::spawn(async {})
        }
    };
    (saga, reconcile)
}

async fn reconcile_when_migrated(state: ApiState, r: reconcile::Reconciler) {
    state.migrated().await;
    r.run_every(reconcile::RECONCILE_EVERY).await;
}

/// How often an idle saga worker looks for due sagas anyway: creating a saga or a webhook wakes the
/// workers at once (in-process `Notify` and `pg_notify`), so this only bounds a lost wake-up and
/// retries whose backoff ended.
pub const WORKER_POLL: StdDuration = StdDuration::from_millis(500);

/// How often the renewal job looks for subscriptions whose period ended.
pub const RENEW_POLL: StdDuration = StdDuration::from_secs(5);

/// The saga worker of a control-plane process: waits for the schema, then resumes every unfinished
/// saga whose lease has expired and runs due sagas until the process drains. `ports` are the real
/// adapters (payment provider over HTTP, the ledger, the balance mirror). Beside it runs the
/// subscriptions' renewal job ([`subscription_store::renew_every`]), which only starts renewal sagas.
pub async fn worker(state: ApiState, ports: Ports, policy: Policy) {
    let drained = state.drained();
    tokio::pin!(drained);
    // A process stopped before its schema was ready has nothing to drain.
    tokio::select! {
        () = &mut drained => return,
        () = state.migrated() => {}
    }
    // The renewal job only starts renewal sagas (claimed with SKIP LOCKED: safe on every replica);
    // this worker's engine runs them.
    let settings = Settings::from_env();
    let (pool, clock) = (state.pool.clone(), state.clock.clone());
    let renewals =
        subscription_store::renew_every(pool, clock, settings, RENEW_POLL, state.drained());
    let engine = Engine::new(state.pool.clone(), state.clock.clone(), ports, policy)
        .with_wake(state.saga_wake.clone());
    tokio::join!(engine.run(WORKER_POLL, state.drained()), renewals);
}
