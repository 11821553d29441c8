//! Batched settlement: finished requests hand their adjusts to a background task that applies
//! whatever is queued in one `Store::adjust` call (one Redis round trip for many requests).
//!
//! `SettlerHandle::send` never blocks the request path: when the queue is full the batch is
//! applied by a task of its own instead (nothing is lost). `flush` waits until everything sent
//! before it has been applied (tests, graceful shutdown).

use super::algo::Nanos;
use super::store::{Adjust, Store};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

/// Most requests merged into one `adjust` call.
pub const MAX_BATCH_REQUESTS: usize = 256;

/// The settler's clock (nanoseconds since the Unix epoch).
pub type Clock = Arc<dyn Fn() -> Nanos + Send + Sync>;

enum Msg {
    Adjusts(Vec<Adjust>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettlerStats {
    /// `adjust` calls made by the settler task.
    pub batches: u64,
    /// Requests settled (one `send` each).
    pub requests: u64,
    /// Requests applied outside the queue because it was full.
    pub overflowed: u64,
    /// `adjust` calls that returned an error (their adjusts are lost).
    pub errors: u64,
}

#[derive(Default)]
struct Shared {
    batches: AtomicU64,
    requests: AtomicU64,
    overflowed: AtomicU64,
    errors: AtomicU64,
    /// Overflow tasks still running.
    direct_in_flight: AtomicUsize,
    direct_done: Notify,
}

pub struct Settler;

impl Settler {
    /// Spawns the settler on the current tokio runtime with the system clock.
    pub fn spawn(store: Arc<dyn Store>, capacity: usize) -> SettlerHandle {
        Self::spawn_with_clock(store, capacity, Arc::new(system_now))
    }

    pub fn spawn_with_clock(store: Arc<dyn Store>, capacity: usize, clock: Clock) -> SettlerHandle {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(store.clone(), clock.clone(), rx, shared.clone()));
        SettlerHandle {
            tx,
            store,
            clock,
            shared,
        }
    }
}

#[derive(Clone)]
pub struct SettlerHandle {
    tx: mpsc::Sender<Msg>,
    store: Arc<dyn Store>,
    clock: Clock,
    shared: Arc<Shared>,
}

impl SettlerHandle {
    /// Queues one finished request's adjusts; never blocks.
    pub fn send(&self, adjusts: Vec<Adjust>) {
        if adjusts.is_empty() {
            return;
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Adjusts(adjusts)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Adjusts(adjusts)))
            | Err(mpsc::error::TrySendError::Closed(Msg::Adjusts(adjusts))) => {
                self.apply_directly(adjusts)
            }
            Err(_) => {}
        }
    }

    fn apply_directly(&self, adjusts: Vec<Adjust>) {
        self.shared.overflowed.fetch_add(1, Ordering::Relaxed);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("settler queue full outside a tokio runtime: adjusts dropped");
            return;
        };
        self.shared.direct_in_flight.fetch_add(1, Ordering::AcqRel);
        let store = self.store.clone();
        let shared = self.shared.clone();
        let now = (self.clock)();
        rt.spawn(async move {
            if let Err(e) = store.adjust(now, &adjusts).await {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "limiter settlement failed");
            }
            shared.batches.fetch_add(1, Ordering::Relaxed);
            if shared.direct_in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.direct_done.notify_waiters();
            }
        });
    }

    /// Waits until every adjust sent before this call has been applied.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
        loop {
            let done = self.shared.direct_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.shared.direct_in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }

    pub fn stats(&self) -> SettlerStats {
        SettlerStats {
            batches: self.shared.batches.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            overflowed: self.shared.overflowed.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    clock: Clock,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<Adjust> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut msg = Some(first);
        let mut requests = 0usize;
        while let Some(m) = msg.take() {
            match m {
                Msg::Adjusts(a) => {
                    batch.extend(a);
                    requests += 1;
                }
                Msg::Flush(done) => flushes.push(done),
            }
            if requests < MAX_BATCH_REQUESTS {
                msg = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = store.adjust(clock(), &batch).await {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, adjusts = batch.len(), "limiter settlement failed");
            }
            shared.batches.fetch_add(1, Ordering::Relaxed);
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Nanoseconds since the Unix epoch from the system clock.
pub fn system_now() -> Nanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::{Charge, StoreError, Taken};
    use crate::Algorithm;
    use async_trait::async_trait;
    use parking_lot::Mutex;
    use std::time::Duration;

    /// Records each adjust call; optionally slow.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<usize>>,
        delay: Option<Duration>,
    }

    #[async_trait]
    impl Store for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn take(&self, _now: Nanos, _c: &[Charge]) -> Result<Taken, StoreError> {
            Ok(Taken::Admitted(Vec::new()))
        }
        async fn adjust(&self, _now: Nanos, a: &[Adjust]) -> Result<(), StoreError> {
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            self.calls.lock().push(a.len());
            Ok(())
        }
    }

    fn adj(n: usize) -> Vec<Adjust> {
        let algo = Arc::new(Algorithm::Concurrency { limit: 10 });
        (0..n)
            .map(|i| Adjust {
                key: format!("k{i}").into(),
                algo: algo.clone(),
                delta: -1,
            })
            .collect()
    }

    #[tokio::test]
    async fn batches_queued_requests_into_one_call() {
        let rec = Arc::new(Recorder::default());
        let h = Settler::spawn_with_clock(rec.clone(), 1024, Arc::new(|| 42));
        // The task has not run yet (current-thread runtime): everything queues up.
        for _ in 0..10 {
            h.send(adj(2));
        }
        h.flush().await;
        assert_eq!(*rec.calls.lock(), vec![20]);
        let s = h.stats();
        assert_eq!(
            (s.batches, s.requests, s.overflowed, s.errors),
            (1, 10, 0, 0)
        );
    }

    #[tokio::test]
    async fn batch_size_is_capped() {
        let rec = Arc::new(Recorder::default());
        let h = Settler::spawn_with_clock(rec.clone(), 1024, Arc::new(|| 42));
        for _ in 0..(MAX_BATCH_REQUESTS + 10) {
            h.send(adj(1));
        }
        h.flush().await;
        assert_eq!(*rec.calls.lock(), vec![MAX_BATCH_REQUESTS, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_applies_directly_and_flush_waits_for_it() {
        let rec = Arc::new(Recorder {
            delay: Some(Duration::from_millis(5)),
            ..Recorder::default()
        });
        let h = Settler::spawn_with_clock(rec.clone(), 2, Arc::new(|| 42));
        for _ in 0..5 {
            h.send(adj(1));
        }
        h.flush().await;
        let total: usize = rec.calls.lock().iter().sum();
        assert_eq!(total, 5, "nothing lost");
        assert_eq!(h.stats().overflowed, 3);
    }

    #[tokio::test]
    async fn empty_send_is_ignored_and_flush_returns() {
        let rec = Arc::new(Recorder::default());
        let h = Settler::spawn(rec.clone(), 4);
        h.send(Vec::new());
        h.flush().await;
        assert!(rec.calls.lock().is_empty());
    }
}
