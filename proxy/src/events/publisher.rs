//! The publisher task: sends events in batches and keeps order through outages with the spool.
//!
//! Online (spool empty): take the next drain's [`Batch`] (one channel message per drain), send it
//! all in one loop, await every delivery; what Kafka refused or timed out goes to the spool, in
//! order; the emptied batch goes back to the drain's free list. Offline (spool not empty):
//! every new event joins the spool behind the older ones, and every [`RETRY_EVERY`] the oldest
//! spooled events are sent again; the delivered ones leave the spool, and once it is empty the task
//! is online again. Without a spool, undeliverable events are dropped and counted.
//!
//! While another process of the same instance holds the spool (an in-place upgrade: the old process
//! drains for its grace period), the spool is [`Pending`]: undeliverable events wait in memory
//! (bounded) and go to the spool, in order, as soon as the old process lets it go.
//!
//! The producer is a plain `BaseProducer` that this task polls itself while a batch is out, so a
//! batch costs a few wake-ups instead of a future, a oneshot and a polling-thread wake-up per event
//! (`FutureProducer`: about 4 µs of CPU per request, see loadtests/results/events.md). Delivery
//! reports land in [`Deliveries`] (the producer's context) as the batch position of each failure;
//! every queued message gets exactly one report within `message.timeout.ms`, so a batch always ends.

use super::batch::{Batch, EventRef, Pool};
use super::spool::Spool;
use super::Event;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Spooled events sent again at once.
const REPLAY_BATCH: usize = 512;
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

/// Most events held in memory while the spool is [`Pending`]; past it they are dropped and counted.
const HELD_MAX: usize = 100_000;

/// A spool another process still holds, opened by a thread waiting for its lock.
pub(super) type Pending = tokio::sync::oneshot::Receiver<std::io::Result<Spool>>;

pub(super) struct Publisher {
    producer: BaseProducer<Deliveries>,
    topic: String,
    spool: Option<Spool>,
    pending: Option<Pending>,
    /// Undeliverable events kept while the spool is pending, oldest first.
    held: Vec<Event>,
}

/// The publisher's end of the drain's handover: the batches, the count of events in them (lowered
/// on receipt) and the free list the sent batches go back to.
pub(super) struct Handover {
    pub(super) rx: mpsc::Receiver<Batch>,
    pub(super) waiting: Arc<AtomicUsize>,
    pub(super) pool: Arc<Pool>,
}

impl Handover {
    /// The next batch without waiting.
    fn try_recv(&mut self) -> Option<Batch> {
        let b = self.rx.try_recv().ok()?;
        self.waiting.fetch_sub(b.len(), Ordering::Relaxed);
        Some(b)
    }

    /// The next batch; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await?;
        self.waiting.fetch_sub(b.len(), Ordering::Relaxed);
        Some(b)
    }
}

/// Counts `n` dropped events by reason (`queue_full`, `spool_full`, `no_spool`, `spool_error`).
pub(super) fn dropped(reason: &str, n: u64) {
    if let Some(m) = crate::metrics::metrics() {
        m.usage_events_dropped
            .with_label_values(&[reason])
            .inc_by(n);
    }
}

impl Publisher {
    pub(super) fn new(
        producer: BaseProducer<Deliveries>,
        topic: String,
        spool: Option<Spool>,
        pending: Option<Pending>,
    ) -> Self {
        Publisher {
            producer,
            topic,
            spool,
            pending,
            held: Vec::new(),
        }
    }

    fn spooling(&self) -> bool {
        !self.held.is_empty() || self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Takes the pending spool once its lock is ours, moving the held events into it (behind what
    /// the previous process left, which is older).
    fn adopt(&mut self) {
        let Some(rx) = self.pending.as_mut() else {
            return;
        };
        let opened = match rx.try_recv() {
            Ok(opened) => opened,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                Err(std::io::Error::other("the spool opener stopped"))
            }
        };
        self.pending = None;
        match opened {
            Ok(spool) => {
                tracing::info!("usage events: the spool is this process's now");
                self.spool = Some(spool);
            }
            Err(e) => tracing::error!(error = %e, "usage events: opening the spool failed"),
        }
        for e in std::mem::take(&mut self.held) {
            self.spool_one(&e);
        }
    }

    /// The task's loop, until `stop` is notified; then the shutdown flush, and `done` is signalled.
    pub(super) async fn run(
        mut self,
        mut from: Handover,
        stop: Arc<Notify>,
        done: std_mpsc::Sender<()>,
    ) {
        loop {
            self.adopt();
            self.gauges(&from);
            if self.spooling() {
                self.spool_all(&mut from);
                if self.replay().await {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_EVERY) => continue,
                    _ = stop.notified() => break,
                }
            }
            let batch = tokio::select! {
                b = from.recv() => b,
                _ = stop.notified() => break,
            };
            let Some(batch) = batch else { break };
            let failed = self.send(batch.iter()).await;
            self.spool_failed(&batch, failed);
            from.pool.give(batch);
        }
        self.flush(&mut from).await;
        let _ = done.send(());
    }

    /// Shutdown: sends what the channel holds as one batch (unless spooling: then it joins the
    /// spool) and waits for the producer's queue, up to [`FLUSH_WITHIN`].
    async fn flush(&mut self, from: &mut Handover) {
        self.adopt();
        if !self.held.is_empty() && self.spool.is_none() {
            // The spool never became ours: one last delivery attempt for what waited for it.
            let sent = tokio::time::timeout(FLUSH_WITHIN, self.send_held()).await;
            if sent.is_err() || !self.held.is_empty() {
                dropped("no_spool", self.held.len() as u64);
                self.held.clear();
            }
        }
        let mut all = Batch::default();
        while let Some(b) = from.try_recv() {
            all.append(&b);
        }
        if self.spooling() {
            self.spool_failed(&all, 0..all.len());
            return;
        }
        let sent = tokio::time::timeout(FLUSH_WITHIN, self.send(all.iter())).await;
        match sent {
            Ok(failed) => self.spool_failed(&all, failed),
            Err(_) => self.spool_failed(&all, 0..all.len()),
        }
    }

    /// Sends `events` and waits for every delivery; the positions of the failed ones, in order.
    async fn send<'a>(&self, events: impl Iterator<Item = EventRef<'a>>) -> Vec<usize> {
        *self.producer.context().outcomes() = Outcomes::default();
        let mut refused = Vec::new();
        let mut queued = 0;
        for (i, e) in events.enumerate() {
            let mut record = BaseRecord::with_opaque_to(&self.topic, i)
                .key(e.key)
                .payload(e.payload);
            if let Some(tp) = e.traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(tp),
                }));
            }
            // The producer's queue holds 100,000 messages, more than a batch (at most CHANNEL).
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
            return self.send_held().await;
        };
        let batch = match spool.peek(REPLAY_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "usage events: reading the spool failed");
                return false;
            }
        };
        let failed = self.send(batch.iter().map(|(_, e)| e.borrowed())).await;
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

    /// Sends the events held for the pending spool; the failed ones stay held, in order. `true` when
    /// none is left.
    async fn send_held(&mut self) -> bool {
        let failed = self.send(self.held.iter().map(Event::borrowed)).await;
        let mut i = 0;
        self.held.retain(|_| {
            i += 1;
            failed.binary_search(&(i - 1)).is_ok()
        });
        self.held.is_empty()
    }

    /// Moves everything the channel holds into the spool (order kept: older events are there).
    fn spool_all(&mut self, from: &mut Handover) {
        while let Some(b) = from.try_recv() {
            self.spool_failed(&b, 0..b.len());
            from.pool.give(b);
        }
    }

    /// Spools the events of `batch` at `positions` (ascending), in that order.
    fn spool_failed(&mut self, batch: &Batch, positions: impl IntoIterator<Item = usize>) {
        for i in positions {
            match batch.get(i).and_then(EventRef::to_event) {
                Some(e) => self.spool_one(&e),
                None => dropped("spool_error", 1),
            }
        }
    }

    fn spool_one(&mut self, e: &Event) {
        let Some(spool) = self.spool.as_mut() else {
            if self.pending.is_some() && self.held.len() < HELD_MAX {
                self.held.push(e.clone());
            } else {
                dropped(
                    if self.pending.is_some() {
                        "spool_full"
                    } else {
                        "no_spool"
                    },
                    1,
                );
            }
            return;
        };
        match spool.append(e) {
            Ok(true) => {
                if let Some(m) = crate::metrics::metrics() {
                    m.usage_events_spooled.inc();
                }
            }
            Ok(false) => dropped("spool_full", 1),
            Err(err) => {
                tracing::error!(error = %err, "usage events: writing the spool failed");
                dropped("spool_error", 1);
            }
        }
    }

    /// Queue depth (events handed over, plus the producer's in flight) and the spool's size.
    fn gauges(&self, from: &Handover) {
        if let Some(m) = crate::metrics::metrics() {
            let waiting = from.waiting.load(Ordering::Relaxed) as i64;
            let depth = waiting + i64::from(self.producer.in_flight_count());
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
