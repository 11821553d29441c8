//! The publisher task: sends events in batches and keeps order through outages with the spool.
//!
//! Online (spool empty): take what the channel holds (up to [`BATCH`]), send it all, await every
//! delivery; what Kafka refused or timed out goes to the spool, in order. Offline (spool not empty):
//! every new event joins the spool behind the older ones, and every [`RETRY_EVERY`] the oldest
//! spooled events are sent again; the delivered ones leave the spool, and once it is empty the task
//! is online again. Without a spool, undeliverable events are dropped and counted.
//!
//! The producer is a plain `BaseProducer` that this task polls itself while a batch is out, so a
//! batch costs a few wake-ups instead of a future, a oneshot and a polling-thread wake-up per event
//! (`FutureProducer`: about 4 µs of CPU per request, see loadtests/results/events.md). Delivery
//! reports land in [`Deliveries`] (the producer's context) as the batch position of each failure;
//! every queued message gets exactly one report within `message.timeout.ms`, so a batch always ends.

use super::spool::Spool;
use super::Event;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Events sent at once.
const BATCH: usize = 512;
/// Pause between two replay attempts while Kafka is away.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long the shutdown flush waits for Kafka before spooling the rest.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);
/// Pause between two polls for a batch's delivery reports: about `linger.ms`, so a batch that
/// leaves in one produce request is usually answered within two or three polls.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// The producer's context: the current batch's delivery reports (the opaque is the position).
#[derive(Default)]
pub(super) struct Deliveries {
    outcomes: Mutex<Outcomes>,
}

#[derive(Default)]
struct Outcomes {
    /// Reports received for the current batch.
    reported: usize,
    /// Positions of the messages that failed or timed out.
    failed: Vec<usize>,
}

impl Deliveries {
    /// Only this task and the polls it makes take the lock: never contended.
    fn outcomes(&self) -> MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    /// Runs inside `poll`, on the publisher task.
    fn delivery(&self, result: &DeliveryResult<'_>, position: usize) {
        let ok = result.is_ok();
        count(ok);
        let mut o = self.outcomes();
        o.reported += 1;
        if !ok {
            o.failed.push(position);
        }
    }
}

pub(super) struct Publisher {
    producer: BaseProducer<Deliveries>,
    topic: String,
    spool: Option<Spool>,
}

/// Counts a dropped event by reason (`queue_full`, `spool_full`, `no_spool`, `spool_error`).
pub(super) fn dropped(reason: &str) {
    if let Some(m) = crate::metrics::metrics() {
        m.usage_events_dropped.with_label_values(&[reason]).inc();
    }
}

impl Publisher {
    pub(super) fn new(
        producer: BaseProducer<Deliveries>,
        topic: String,
        spool: Option<Spool>,
    ) -> Self {
        Publisher {
            producer,
            topic,
            spool,
        }
    }

    fn spooling(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// The task's loop, until `stop` is notified; then the shutdown flush, and `done` is signalled.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        stop: Arc<Notify>,
        done: std_mpsc::Sender<()>,
    ) {
        loop {
            self.gauges(&rx);
            if self.spooling() {
                self.spool_all(&mut rx);
                if self.replay().await {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => continue,
                    _ = stop.notified() => break,
                }
            }
            let first = tokio::select! {
                e = rx.recv() => e,
                _ = stop.notified() => break,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let failed = self.send(&batch).await;
            for i in failed {
                self.spool_one(&batch[i]);
            }
        }
        self.flush(&mut rx).await;
        let _ = done.send(());
    }

    /// Shutdown: sends what the channel holds (unless spooling: then it joins the spool) and waits
    /// for the producer's queue, up to [`FLUSH_WITHIN`].
    async fn flush(&mut self, rx: &mut mpsc::Receiver<Event>) {
        let mut batch = Vec::new();
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        if self.spooling() {
            batch.iter().for_each(|e| self.spool_one(e));
            return;
        }
        let sent = tokio::time::timeout(FLUSH_WITHIN, self.send(&batch)).await;
        match sent {
            Ok(failed) => failed.into_iter().for_each(|i| self.spool_one(&batch[i])),
            Err(_) => batch.iter().for_each(|e| self.spool_one(e)),
        }
    }

    /// Sends `batch` and waits for every delivery; the positions of the ones that failed, in order.
    async fn send(&self, batch: &[Event]) -> Vec<usize> {
        *self.producer.context().outcomes() = Outcomes::default();
        let mut refused = Vec::new();
        let mut queued = 0;
        for (i, e) in batch.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(&self.topic, i)
                .key(e.key.as_bytes())
                .payload(e.payload.as_bytes());
            if let Some(tp) = &e.traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(tp.as_bytes()),
                }));
            }
            // The producer's queue holds 100 000 messages; this loop queues at most BATCH.
            match self.producer.send(record) {
                Ok(()) => queued += 1,
                Err(_) => {
                    count(false);
                    refused.push(i);
                }
            }
        }
        self.reports(queued).await;
        let mut failed = std::mem::take(&mut self.producer.context().outcomes().failed);
        failed.extend(refused);
        failed.sort_unstable();
        failed
    }

    /// Polls until `queued` delivery reports arrived: while a poll brings one, polls again; else
    /// sleeps [`POLL_EVERY`]. librdkafka reports a whole produce request's messages in one event.
    async fn reports(&self, queued: usize) {
        loop {
            loop {
                let before = self.producer.context().outcomes().reported;
                if before >= queued {
                    return;
                }
                self.producer.poll(Duration::ZERO);
                if self.producer.context().outcomes().reported == before {
                    break;
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// One replay attempt of the oldest spooled events; `true` when all of them went through.
    async fn replay(&mut self) -> bool {
        let Some(spool) = self.spool.as_mut() else {
            return true;
        };
        let batch = match spool.peek(BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "usage events: reading the spool failed");
                return false;
            }
        };
        let events: Vec<Event> = batch.iter().map(|(_, e)| e.clone()).collect();
        let failed = self.send(&events).await;
        let delivered: Vec<usize> = (0..batch.len())
            .filter(|i| !failed.contains(i))
            .map(|i| batch[i].0)
            .collect();
        if let Some(spool) = self.spool.as_mut() {
            if let Err(e) = spool.delivered(&delivered) {
                tracing::error!(error = %e, "usage events: trimming the spool failed");
            }
        }
        failed.is_empty()
    }

    /// Moves everything the channel holds into the spool (order kept: older events are there).
    fn spool_all(&mut self, rx: &mut mpsc::Receiver<Event>) {
        while let Ok(e) = rx.try_recv() {
            self.spool_one(&e);
        }
    }

    fn spool_one(&mut self, e: &Event) {
        let Some(spool) = self.spool.as_mut() else {
            dropped("no_spool");
            return;
        };
        match spool.append(e) {
            Ok(true) => {
                if let Some(m) = crate::metrics::metrics() {
                    m.usage_events_spooled.inc();
                }
            }
            Ok(false) => dropped("spool_full"),
            Err(err) => {
                tracing::error!(error = %err, "usage events: writing the spool failed");
                dropped("spool_error");
            }
        }
    }

    /// Queue depth (the channel plus the producer's in-flight messages) and the spool's size.
    fn gauges(&self, rx: &mpsc::Receiver<Event>) {
        if let Some(m) = crate::metrics::metrics() {
            let depth = rx.len() as i64 + i64::from(self.producer.in_flight_count());
            m.usage_events_queue_depth.set(depth);
            m.usage_events_spool_bytes
                .set(self.spool.as_ref().map_or(0, |s| s.bytes() as i64));
        }
    }
}

/// One delivery outcome in the metrics.
fn count(ok: bool) {
    if let Some(m) = crate::metrics::metrics() {
        if ok {
            m.usage_events_published.inc();
        } else {
            m.usage_events_delivery_failures.inc();
        }
    }
}
