//! The analytics role behind the control plane, for the usage and statement route tests: a real
//! Cassandra keyspace of the test's own (rows written by the analytics crate's own batch writer),
//! the role's HTTP API on a free loopback port with its bearer token, and the control plane's admin
//! API pointed at it. Included by those tests with `#[path]` (the other control-plane tests do not
//! compile the analytics crate's test helpers).
#![allow(dead_code)]

#[path = "../../../analytics/tests/common/cassandra.rs"]
pub mod cassandra;

use std::sync::Arc;

use leaky_analytics::buckets::Totals;
use leaky_analytics::event::UsageRow;
use leaky_analytics::store::{Store, StoreConfig};

use crate::common::{app, TestApp};

/// The role's bearer token, which the control plane forwards with.
pub const ANALYTICS_TOKEN: &str = "analytics-test-token";

/// The role and the control plane in front of it.
pub struct Analytics {
    pub store: Arc<Store>,
    /// The role's own base URL (to compare bytes or check its token directly).
    pub base: String,
    pub app: TestApp,
}

/// Starts the role on a fresh keyspace named after `prefix` and the control plane forwarding to it.
/// Sets `LEAKY_ANALYTICS_URL`/`_TOKEN` in the process environment, which the app reads once when
/// built: each test binary that calls this holds one test.
pub async fn start(prefix: &str) -> anyhow::Result<Analytics> {
    let node = cassandra::node()?;
    let cfg = StoreConfig::new(&node, &cassandra::keyspace(prefix));
    let store = Arc::new(leaky_analytics::connect_store(&cfg).await?);
    let base = serve(store.clone()).await?;
    std::env::set_var("LEAKY_ANALYTICS_URL", &base);
    std::env::set_var("LEAKY_ANALYTICS_TOKEN", ANALYTICS_TOKEN);
    let app = app().await?;
    Ok(Analytics { store, base, app })
}

/// The analytics role's HTTP API on `store`, on a free port; returns its base URL.
async fn serve(store: Arc<Store>) -> anyhow::Result<String> {
    let state = Arc::new(leaky_analytics::api::ApiState {
        anomalies: Arc::new(leaky_analytics::anomaly::sink::AnomalyStore::new(
            store.clone(),
        )),
        store,
        metrics: leaky_analytics::metrics::Metrics::new()?,
        token: Some(ANALYTICS_TOKEN.to_owned()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, leaky_analytics::api::router(state)).await });
    Ok(base)
}

/// One successful request of `org` at `ts`: key `k<i % 2>`, `prompt` prompt and 10 completion
/// tokens, 1 ms.
pub fn row(i: i64, org: &str, model: &str, ts: i64, prompt: i64) -> UsageRow {
    UsageRow {
        event_id: format!("cp-{i}"),
        ts,
        org: org.to_owned(),
        request_id: format!("req-{i}"),
        key_id: format!("k{}", i % 2),
        model: model.to_owned(),
        provider: "openai".to_owned(),
        status: 200,
        totals: Totals {
            requests: 1,
            prompt_tokens: prompt,
            completion_tokens: 10,
            total_tokens: prompt + 10,
            latency_us: 1000,
            ..Totals::default()
        },
    }
}
