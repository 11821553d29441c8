//! Shared by the analytics integration tests: real Kafka and Cassandra (see [`kafka`] and
//! [`cassandra`]), usage events built as the proxy builds them, and the analytics role run
//! in-process (its consumer and its HTTP API on a free loopback port).
#![allow(dead_code)]

pub mod cassandra;
#[path = "../../../control-plane/tests/common/kafka.rs"]
pub mod kafka;

use std::sync::Arc;
use std::time::Duration;

use leaky_analytics::consumer::{Consumer, ConsumerConfig};
use leaky_analytics::metrics::Metrics;
use leaky_analytics::store::{Store, StoreConfig};
use leaky_wire::event::{Envelope, UsageData};
use leaky_wire::usage::{UsageRecord, UsageSource};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// One usage event's inputs.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub org: String,
    pub key: String,
    pub model: String,
    pub provider: String,
    pub ts: i64,
    pub prompt: u64,
    pub completion: u64,
    pub status: u16,
}

impl Ev {
    /// The message payload, through the wire crate's own builder (what proxies publish).
    pub fn payload(&self) -> Vec<u8> {
        let record = UsageRecord {
            schema_version: UsageRecord::SCHEMA_VERSION,
            request_id: format!("req-{}", self.id),
            principal: self.key.as_str().into(),
            user: "u".into(),
            org: Some(self.org.as_str().into()),
            tier: "free".into(),
            route: None,
            model: self.model.clone(),
            provider: self.provider.as_str().into(),
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            source: UsageSource::Reported,
            status: self.status,
            latency_ms: 12.5,
            cached: false,
            charged_tokens: None,
            traceparent: None,
        };
        let time = chrono::DateTime::from_timestamp_millis(self.ts)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let env: Envelope<UsageData> = Envelope::usage(
            &record,
            self.id.clone(),
            "/leaky-tokens/proxy/test".into(),
            time,
        );
        serde_json::to_vec(&env).unwrap_or_default()
    }
}

/// Produces `(key, payload)` messages and waits until the broker has each.
pub async fn produce(brokers: &str, topic: &str, msgs: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let sends = msgs.iter().map(|(k, v)| {
        p.send(
            FutureRecord::to(topic)
                .key(k.as_bytes())
                .payload(v.as_slice()),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

/// Produces events keyed by org, as proxies do.
pub async fn produce_events(brokers: &str, topic: &str, evs: &[Ev]) -> anyhow::Result<()> {
    let msgs: Vec<(String, Vec<u8>)> = evs.iter().map(|e| (e.org.clone(), e.payload())).collect();
    produce(brokers, topic, &msgs).await
}

/// The analytics role in-process: a consumer task and the HTTP API.
pub struct Role {
    pub store: Arc<Store>,
    keyspace: String,
    pub metrics: Metrics,
    pub base: String,
    consumer: tokio::task::JoinHandle<()>,
    api: tokio::task::JoinHandle<()>,
}

impl Role {
    /// Starts the role on `cassandra`/`keyspace`, reading `config`'s topic and group.
    pub async fn start(
        cassandra: &str,
        keyspace: &str,
        config: ConsumerConfig,
    ) -> anyhow::Result<Role> {
        let store =
            Arc::new(leaky_analytics::connect_store(&StoreConfig::new(cassandra, keyspace)).await?);
        Role::start_on(store, config).await
    }

    /// The keyspace the role writes.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Starts a role on an existing store (a second consumer of the same keyspace).
    pub async fn start_on(store: Arc<Store>, config: ConsumerConfig) -> anyhow::Result<Role> {
        let metrics = Metrics::new()?;
        let consumer = Consumer::new(config, store.clone(), metrics.clone())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(leaky_analytics::api::ApiState {
            anomalies: Arc::new(leaky_analytics::anomaly::sink::AnomalyStore::new(
                store.clone(),
            )),
            store: store.clone(),
            metrics: metrics.clone(),
            token: None,
        });
        let router = leaky_analytics::api::router(state);
        let api = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let consumer = tokio::spawn(consumer.run());
        let keyspace = store.keyspace().to_owned();
        Ok(Role {
            store,
            keyspace,
            metrics,
            base,
            consumer,
            api,
        })
    }

    /// Kills the consumer wherever it is (the task is dropped at its current await point); the API
    /// keeps answering from what was written.
    pub fn kill(&self) {
        self.consumer.abort();
    }

    /// GET `path` on the API as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = reqwest::get(format!("{}{path}", self.base)).await?;
        anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
        Ok(r.json().await?)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.consumer.abort();
        self.api.abort();
    }
}

/// Polls `check` until it returns `Some` or `secs` pass (waiting for asynchronous work to land;
/// the assertions that follow are the proof).
pub async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer config for a test: a fresh group, quick retries.
pub fn consumer_config(brokers: &str, topic: &str) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(
        brokers,
        &format!("g-{}", uuid::Uuid::new_v4().simple()),
        topic,
    );
    c.retry_max = Duration::from_secs(2);
    c
}
