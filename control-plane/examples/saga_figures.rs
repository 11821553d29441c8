//! Provisional purchase-saga figures for issue #15, until the control plane spawns the saga worker
//! itself (then `loadtests/events/events.py saga` measures through the HTTP API instead). The saga
//! engine runs here as `billing::worker` would run it: `Engine::run` with the worker's poll interval,
//! the real payment provider client (`HttpPayments`) against the payment stub and the real ledger.
//!
//! ```text
//! cargo run --release -p leaky-control-plane --example saga_figures -- \
//!     <database url> <payment stub url> <purchases per run> <concurrency> <runs>
//! ```
//!
//! NOT the product's wiring: the `Credits` port here is a thin adapter over `ledger::commands` written
//! for this harness, and the balance mirror is a no-op (there is no Redis adapter on this branch), so
//! the `raise_balance` step costs nothing. Purchases are created with `billing::store::create` (what
//! `POST /v1/orgs/{org}/purchases` calls). Completion = the last forward step's `at` − `created_at`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use leaky_control_plane::billing::payments_http::{HttpPayments, HttpPaymentsConfig};
use leaky_control_plane::billing::ports::{BalanceMirror, Credits, PortError};
use leaky_control_plane::billing::store::{self, NewPurchase};
use leaky_control_plane::billing::{Engine, Policy, Ports, Settings, WORKER_POLL};
use leaky_control_plane::clock::SystemClock;
use leaky_control_plane::ledger;
use leaky_control_plane::{db, tenancy};
use sqlx::PgPool;
use uuid::Uuid;

struct LedgerCredits(PgPool);

fn transient(e: impl std::fmt::Display) -> PortError {
    PortError::Transient(e.to_string())
}

#[async_trait]
impl Credits for LedgerCredits {
    async fn credit_purchase(
        &self,
        org: Uuid,
        tokens: i64,
        purchase_ref: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PortError> {
        ledger::credit_purchase(&self.0, org, tokens, purchase_ref, expires_at)
            .await
            .map(|_| ())
            .map_err(transient)
    }
    async fn reverse_purchase(&self, org: Uuid, purchase_ref: &str) -> Result<(), PortError> {
        ledger::reverse_purchase(&self.0, org, purchase_ref)
            .await
            .map(|_| ())
            .map_err(transient)
    }
    async fn credited_total(&self, org: Uuid) -> Result<(i64, i64), PortError> {
        ledger::credited_total(&self.0, org)
            .await
            .map_err(transient)
    }
}

struct NoMirror;

#[async_trait]
impl BalanceMirror for NoMirror {
    async fn set_credited(&self, _: Uuid, _: i64, _: i64) -> Result<bool, PortError> {
        Ok(true)
    }
}

/// One purchase: created, then polled every 10 ms until it leaves `pending`; its completion time (ms).
async fn purchase(pool: &PgPool, org: Uuid) -> f64 {
    let key = Uuid::new_v4().to_string();
    let req = NewPurchase {
        org,
        tokens: 1_000_000,
        idempotency_key: &key,
        actor: "bench",
    };
    let (p, _) = store::create(pool, Utc::now(), &Settings::default(), &req)
        .await
        .unwrap();
    loop {
        let got = store::get(pool, p.id).await.unwrap();
        if got.status != "pending" {
            assert_eq!(got.status, "completed", "{got:?}");
            let last = got
                .steps
                .iter()
                .filter(|s| s.direction == "forward")
                .map(|s| s.at)
                .max()
                .unwrap();
            return (last - got.created_at).num_microseconds().unwrap() as f64 / 1e3;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (url, payments) = (&a[1], &a[2]);
    let (n, conc, runs): (usize, usize, usize) = (
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
        a[5].parse().unwrap(),
    );
    let pool = db::pool(url, 16).unwrap();
    db::migrate(&pool).await.unwrap();
    let http = HttpPayments::new(HttpPaymentsConfig {
        base_url: payments.clone(),
        api_key: "sk_test_leaky".to_owned(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let ports = Ports {
        payments: Arc::new(http),
        credits: Arc::new(LedgerCredits(pool.clone())),
        mirror: Arc::new(NoMirror),
    };
    let engine = Engine::new(
        pool.clone(),
        Arc::new(SystemClock),
        ports,
        Policy::default(),
    );
    tokio::spawn(engine.run(WORKER_POLL, std::future::pending::<()>()));
    println!("| run | completion p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let mut all = Vec::new();
    for run in 1..=runs {
        let name = format!("bench-{run}-{}", Uuid::new_v4().simple());
        let org = tenancy::orgs::create(&pool, "bench", &name)
            .await
            .unwrap()
            .id;
        let mut t: Vec<f64> = futures::stream::iter(0..n)
            .map(|_| purchase(&pool, org))
            .buffer_unordered(conc)
            .collect()
            .await;
        t.sort_by(f64::total_cmp);
        println!(
            "| {run} | {:.0} | {:.0} | {:.0} |",
            pct(&t, 0.5),
            pct(&t, 0.99),
            t[t.len() - 1]
        );
        all.extend(t);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "\nAll {} purchases: p50 {:.0} ms, p99 {:.0} ms.",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
}
