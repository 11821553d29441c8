//! Bulkhead: a concurrency limit with a bounded, time-limited FIFO wait queue.
//!
//! `acquire` takes a free slot at once if there is one; otherwise it joins the queue if fewer than
//! `max_queue` callers are waiting (else fails at once with `QueueFull`), and waits at most
//! `queue_timeout` (else `QueueTimeout`). Waiters are served in arrival order (tokio's semaphore is
//! fair, and a released slot goes to the first waiter rather than to a newcomer's `try_acquire`).
//! A waiter whose future is dropped leaves the queue. The permit owns its slot; dropping it releases
//! the slot.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrency limit of one deployment or tenant. Create it inside an `Arc`.
pub struct Bulkhead {
    sem: Arc<Semaphore>,
    max_concurrent: u32,
    max_queue: u32,
    queue_timeout: Duration,
    queued: AtomicU32,
}

/// Why `acquire` gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkheadFull {
    /// Every slot busy and `max_queue` callers already waiting.
    QueueFull,
    /// Waited `queue_timeout` without a slot.
    QueueTimeout,
}

/// One slot of a [`Bulkhead`]; released on drop.
#[derive(Debug)]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
}

/// Leaves the queue when dropped, whether the wait succeeded, timed out or was cancelled.
struct InQueue<'a>(&'a AtomicU32);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// `max_concurrent` slots (0: every caller waits and times out), up to `max_queue` waiters, each
    /// waiting at most `queue_timeout`.
    pub fn new(max_concurrent: u32, max_queue: u32, queue_timeout: Duration) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            max_queue,
            queue_timeout,
            queued: AtomicU32::new(0),
        }
    }

    /// A free slot, without waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<BulkheadPermit> {
        self.sem
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| BulkheadPermit { _permit: p })
    }

    /// A slot: at once if free, else after a bounded wait in the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<BulkheadPermit, BulkheadFull> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        let _in_queue = self.join_queue().ok_or(BulkheadFull::QueueFull)?;
        match tokio::time::timeout(self.queue_timeout, self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(BulkheadPermit { _permit: p }),
            // The semaphore is never closed; treat it as a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::QueueTimeout),
        }
    }

    fn join_queue(&self) -> Option<InQueue<'_>> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            })
            .ok()
            .map(|_| InQueue(&self.queued))
    }

    /// Slots in use.
    pub fn in_flight(&self) -> u32 {
        let free = u32::try_from(self.sem.available_permits()).unwrap_or(u32::MAX);
        self.max_concurrent.saturating_sub(free)
    }

    /// Callers waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent
    }

    /// Whether a slot is free (`in_flight < max_concurrent`).
    pub fn has_room(&self) -> bool {
        self.sem.available_permits() > 0
    }
}
