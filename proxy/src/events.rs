//! Usage events on Kafka (`events.kafka`): every usage record, as a `leaky.usage.v1` CloudEvents
//! envelope (`leaky_wire::event`), keyed by org, with the caller's `traceparent` as a header.
//!
//! The request path is untouched: it still does one lock-free push into the usage queue. The
//! background drain (every 50 ms) encodes each record ([`encode`]: borrowed fields, no owned
//! envelope) into one [`batch::Batch`] per drain and hands the whole batch to the publisher task in
//! one channel send (one wake-up per drain, not per event). At most [`CHANNEL`] events wait for the
//! publisher: past that the drain drops and counts, it never waits. The task owns an idempotent
//! producer (`acks=all`, `enable.idempotence=true`), a plain `BaseProducer` it polls itself once
//! per batch (no polling thread, no future per event: see [`publisher`]) and, when configured, the
//! on-disk [`spool`]: events Kafka did not take within `delivery_timeout_ms` go there, and while
//! the spool holds anything every new event joins it behind them, so they are replayed in order
//! once Kafka is back. Absent `events.kafka`, no producer exists and usage records go to the log
//! only.

pub mod batch;
pub mod encode;
mod publisher;
pub mod spool;

use leaky_config::model::events::Kafka;
use leaky_wire::UsageRecord;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Events handed over but not yet taken by the publisher: the usage queue's size, so a drain never
/// overflows it while Kafka answers.
pub const CHANNEL: usize = 65_536;

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
    /// One message per drain. Bounded in events by `waiting`, so its bound in batches is never hit.
    tx: mpsc::Sender<batch::Batch>,
    /// Events sent on `tx` and not yet received by the publisher.
    waiting: Arc<AtomicUsize>,
    /// Emptied batches the publisher returns, for the next drains' encoding.
    pool: Arc<batch::Pool>,
    /// Locked once per drain (only the drain encodes): keeps the time cache.
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
        let (spool, pending) = match &k.spool_dir {
            Some(dir) => open_spool(dir, k.spool_max_bytes)?,
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = std_mpsc::channel();
        let (waiting, pool) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(batch::Pool::default()),
        );
        let task = publisher::Publisher::new(producer, k.topic.clone(), spool, pending);
        let handover = publisher::Handover {
            rx,
            waiting: waiting.clone(),
            pool: pool.clone(),
        };
        tokio::spawn(task.run(handover, stop.clone(), done_tx));
        Ok(Events {
            tx,
            waiting,
            pool,
            encoder: Mutex::new(encode::Encoder::new(source)),
            stop,
            stopped: Mutex::new(Some(done_rx)),
        })
    }

    /// The drain's session: encodes records into one batch with one lock for the whole drain; the
    /// batch goes to the publisher when the session ends (dropped).
    pub fn session(&self) -> Session<'_> {
        let encoder = self
            .encoder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Session {
            events: self,
            room: CHANNEL.saturating_sub(self.waiting.load(Ordering::Relaxed)),
            batch: self.pool.take(),
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

/// The spool in `dir`, or — while another process of this instance holds it (an in-place upgrade)
/// — a thread waiting for it, whose result the publisher picks up.
fn open_spool(
    dir: &std::path::Path,
    max_bytes: u64,
) -> Result<(Option<spool::Spool>, Option<publisher::Pending>), EventsError> {
    let failed = |source| EventsError::Spool {
        dir: dir.display().to_string(),
        source,
    };
    if let Some(s) = spool::Spool::try_open(dir, max_bytes).map_err(failed)? {
        return Ok((Some(s), None));
    }
    tracing::info!(dir = %dir.display(), "usage events: another process holds the spool; taking it when that one exits");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("spool-lock".into())
        .spawn(move || {
            let _ = tx.send(spool::Spool::open(&dir, max_bytes));
        })
        .map_err(failed)?;
    Ok((None, Some(rx)))
}

/// One drain's access to the publisher: its events, sent as one batch when it is dropped.
pub struct Session<'a> {
    events: &'a Events,
    /// Events this drain may still add before the publisher's backlog reaches [`CHANNEL`].
    room: usize,
    batch: batch::Batch,
    encoder: MutexGuard<'a, encode::Encoder>,
}

impl Session<'_> {
    /// Adds `r`'s event to the drain's batch; past the backlog's bound it is dropped and counted.
    pub fn offer(&mut self, r: &UsageRecord) {
        if self.batch.len() >= self.room {
            publisher::dropped("queue_full", 1);
            return;
        }
        self.encoder.usage(r, &mut self.batch);
    }
}

impl Drop for Session<'_> {
    /// Hands the batch over in one send (never waits). `waiting` is raised first so the publisher,
    /// which lowers it on receipt, never sees it below zero.
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            self.events.pool.give(batch);
            return;
        }
        let n = batch.len();
        self.events.waiting.fetch_add(n, Ordering::Relaxed);
        if let Err(e) = self.events.tx.try_send(batch) {
            self.events.waiting.fetch_sub(n, Ordering::Relaxed);
            publisher::dropped("queue_full", n as u64);
            self.events.pool.give(e.into_inner());
        }
    }
}

/// How long librdkafka waits for more messages before a produce request. The publisher queues a
/// whole drain's batch in one loop, well within this, so a drain leaves in one produce request
/// (per partition leader; with the defaults `batch.size` 1 MB and `batch.num.messages` 10,000, up
/// to ~30,000 events/s at ~600 bytes each; past that a drain takes a few). Longer would only delay
/// the acknowledgement: the next batch is produced after this one's reports, never joining it.
const LINGER_MS: &str = "5";
/// No compression: lz4 cuts the bytes sent and stored 5.3× (604 → 113 per event) but costs the
/// broker thread ~0.5 µs per event, a tenth of the producer's CPU budget (issue #15's 5%); see
/// loadtests/results/events.md (usage section). Worth turning on where the link, not the CPU, is
/// scarce.
const COMPRESSION: &str = "none";

/// librdkafka's settings: idempotent, every replica acknowledges, deliveries give up after the
/// configured timeout (then the event goes to the spool), and a restarted broker is found fast.
fn producer_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
        .set("compression.type", COMPRESSION)
        .set(
            "message.timeout.ms",
            k.delivery_timeout.as_millis().to_string(),
        )
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    c
}

#[cfg(test)]
mod tests;
