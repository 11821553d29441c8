//! Usage events on Kafka (`events.kafka`): every usage record, as a `leaky.usage.v1` CloudEvents
//! envelope (`leaky_wire::event`), keyed by org, with the caller's `traceparent` as a header.
//!
//! The request path is untouched: it still does one lock-free push into the usage queue. The
//! background drain (every 50 ms) encodes each record ([`encode`]: borrowed fields, no owned
//! envelope) and hands it to the publisher task through a bounded channel (`try_send`: a full
//! channel drops and counts, it never waits). The task owns an idempotent producer (`acks=all`,
//! `enable.idempotence=true`), a plain `BaseProducer` it polls itself once per batch (no polling
//! thread, no future per event: see [`publisher`]) and, when configured, the on-disk
//! [`spool`]: events Kafka did not take within `delivery_timeout_ms` go there, and while the spool
//! holds anything every new event joins it behind them, so they are replayed in order once Kafka is
//! back. Absent `events.kafka`, no producer exists and usage records go to the log only.

pub mod encode;
mod publisher;
pub mod spool;

use leaky_config::model::events::Kafka;
use leaky_wire::UsageRecord;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Events between two turns of the publisher: the usage queue's size, so a drain never overflows it
/// while Kafka answers.
const CHANNEL: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("creating the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error("opening the event spool {dir}: {source}")]
    Spool {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// One encoded event: what the producer sends and what the spool stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The message key: the org, or `-`.
    pub key: String,
    /// The caller's W3C `traceparent`, sent as a Kafka header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The envelope's JSON.
    pub payload: String,
}

/// The drain's handle to the publisher task.
pub struct Events {
    tx: mpsc::Sender<Event>,
    /// Locked once per drain (only the drain encodes): keeps the time cache and size hint.
    encoder: Mutex<encode::Encoder>,
    stop: Arc<Notify>,
    /// Receives once the task has flushed at shutdown.
    stopped: Mutex<Option<std_mpsc::Receiver<()>>>,
}

impl Events {
    /// Creates the producer and the spool and spawns the publisher on the current runtime (the
    /// background one). `source` is the envelopes' CloudEvents `source`.
    pub fn start(k: &Kafka, source: String) -> Result<Events, EventsError> {
        let producer = producer_config(k).create_with_context(publisher::Deliveries::default())?;
        let spool = match &k.spool_dir {
            Some(dir) => Some(spool::Spool::open(dir, k.spool_max_bytes).map_err(|e| {
                EventsError::Spool {
                    dir: dir.display().to_string(),
                    source: e,
                }
            })?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = std_mpsc::channel();
        let task = publisher::Publisher::new(producer, k.topic.clone(), spool);
        tokio::spawn(task.run(rx, stop.clone(), done_tx));
        Ok(Events {
            tx,
            encoder: Mutex::new(encode::Encoder::new(source)),
            stop,
            stopped: Mutex::new(Some(done_rx)),
        })
    }

    /// The drain's session: encodes and offers records with one lock for the whole drain.
    pub fn session(&self) -> Session<'_> {
        let encoder = self
            .encoder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Session {
            tx: &self.tx,
            encoder,
        }
    }

    /// At shutdown: asks the task to send what it holds (spooling what Kafka does not take) and
    /// waits up to `within` for it. Called off the background runtime's threads.
    pub fn close(&self, within: Duration) {
        self.stop.notify_one();
        let rx = self.stopped.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            if rx.recv_timeout(within).is_err() {
                tracing::warn!("usage events: shutdown flush did not finish in time");
            }
        }
    }
}

/// One drain's access to the publisher.
pub struct Session<'a> {
    tx: &'a mpsc::Sender<Event>,
    encoder: MutexGuard<'a, encode::Encoder>,
}

impl Session<'_> {
    /// Hands `r`'s event to the publisher; a full channel drops and counts it (never waits).
    pub fn offer(&mut self, r: &UsageRecord) {
        let Some(event) = self.encoder.usage(r) else {
            return;
        };
        if self.tx.try_send(event).is_err() {
            publisher::dropped("queue_full");
        }
    }
}

/// librdkafka's settings: idempotent, every replica acknowledges, deliveries give up after the
/// configured timeout (then the event goes to the spool), and a restarted broker is found fast.
fn producer_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            k.delivery_timeout.as_millis().to_string(),
        )
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    c
}
