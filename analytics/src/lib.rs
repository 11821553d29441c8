//! Usage analytics (issue 16): the `leaky-tokens analytics` role.
//!
//! A Kafka consumer group reads usage events (`leaky.usage.v1`, see `leaky_wire::event`) and stores
//! them in Apache Cassandra through the `scylla` driver; an HTTP API answers usage queries from the
//! rollups. Modules, from the wire inwards:
//!
//! - [`event`]: a message → a [`event::UsageRow`] or the reason it is poison;
//! - [`consumer`]: batches, the dead-letter topic, offset commits after the writes;
//! - [`store`]: the session, prepared statements, raw rows and rollup recomputation (exactly once
//!   in effect, without counters — see the module docs and `docs/analytics.md`);
//! - [`schema`]: versioned CQL migrations applied at start-up;
//! - [`buckets`]: time buckets and partitions; [`query`]: plans and folds usage queries;
//! - [`anomaly`]: the streaming anomaly detector, fed live by the consumer ([`anomaly::live`]) and
//!   stored and published by [`anomaly::sink`];
//! - [`prices`]: the versioned price table and per-event cost; [`reports`]: statements, the
//!   closer job and `report.generated`; [`zones`]: each org's time zone, from the control plane's
//!   tenancy events (the zone its statements close in);
//! - [`api`]: the HTTP routes ([`problem`]: their shared problem+json and token check);
//!   [`metrics`]: the Prometheus families.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod anomaly;
pub mod api;
pub mod buckets;
pub mod consumer;
pub mod error;
pub mod event;
pub mod metrics;
pub mod prices;
pub mod problem;
pub mod query;
pub mod reports;
pub mod schema;
pub mod store;
pub mod zones;

/// Everything the role needs to start.
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    pub consumer: consumer::ConsumerConfig,
    pub store: store::StoreConfig,
    pub listen: SocketAddr,
    /// The bearer token of the usage routes (`None`: open).
    pub token: Option<String>,
    /// Price versions seeded at start-up (`--prices`; a stored version is never overwritten).
    pub prices: Vec<prices::PriceVersion>,
    /// The statement closer (`None`: this process closes no statements).
    pub statements: Option<reports::job::CloserConfig>,
    /// The consumer of org time zones (`None`: every org closes in the closer's fallback zone).
    pub zones: Option<zones::ZoneConfig>,
}

/// Why the role could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Connects to Cassandra, retrying with backoff until it answers (the role may start before its
/// database), and applies the migrations.
pub async fn connect_store(cfg: &store::StoreConfig) -> Result<store::Store, store::StoreError> {
    let mut pause = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        match store::Store::connect(cfg).await {
            Ok(s) => return Ok(s),
            Err(e @ store::StoreError::Config(_)) => return Err(e),
            Err(e) if attempts >= 30 => return Err(e),
            Err(e) => {
                attempts += 1;
                tracing::warn!(error = %e, retry_in = ?pause, "cassandra not ready");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the role: the consumer and the HTTP API, until `shutdown` resolves (then the API drains
/// and the consumer stops; an uncommitted batch is redelivered to the next member, harmlessly).
pub async fn run(
    cfg: AnalyticsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = Arc::new(connect_store(&cfg.store).await?);
    prices::seed(&store, &cfg.prices).await?;
    let metrics = metrics::Metrics::new()?;
    let closing = match cfg.statements.clone() {
        Some(c) => {
            let closer = reports::job::Closer::new(
                c,
                store.clone(),
                metrics.clone(),
                reports::job::system_clock(),
            )?;
            Some(tokio::spawn(closer.run()))
        }
        None => None,
    };
    let learning = match cfg.zones.clone() {
        Some(z) => Some(tokio::spawn(
            zones::ZoneConsumer::new(z, store.clone())?.run(),
        )),
        None => None,
    };
    let consumer = consumer::Consumer::new(cfg.consumer.clone(), store.clone(), metrics.clone())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| RunError::Listen(cfg.listen, e))?;
    let consuming = tokio::spawn(consumer.run());
    let state = Arc::new(api::ApiState {
        anomalies: Arc::new(anomaly::sink::AnomalyStore::new(store.clone())),
        store,
        metrics,
        token: cfg.token.clone(),
    });
    tracing::info!(listen = %cfg.listen, topic = %cfg.consumer.topic, "analytics running");
    let served = axum::serve(listener, leaky_telemetry::http::traced(api::router(state)))
        .with_graceful_shutdown(shutdown)
        .await;
    consuming.abort();
    for task in [closing, learning].into_iter().flatten() {
        task.abort();
    }
    served.map_err(|e| RunError::Listen(cfg.listen, e))
}
