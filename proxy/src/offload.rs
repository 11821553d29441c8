//! The bounded pool for CPU-heavy request work (token estimates of large bodies).
//!
//! A request worker runs every connection it owns on one thread: a task that computes for a second
//! there (the exact BPE count of a multi-megabyte prompt) stalls every other request of that worker
//! for the whole second. Such work goes to tokio's blocking threads instead, at most [`limit`] jobs
//! at a time process-wide, so a flood of large prompts queues (asynchronously: the waiting requests
//! cost their bodies' memory, no thread) instead of taking every core from the workers.

use leaky_filters::{RejectKind, Rejection};
use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// Jobs running at once: half the cores (at least one), so the request workers keep the rest.
pub fn limit() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(limit()))
}

/// Runs `job` on a blocking thread once a slot is free, and waits for its result without blocking
/// the calling worker.
pub async fn run<T, F>(job: F) -> Result<T, Rejection>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let failed = |what: &str| {
        Rejection::new(
            RejectKind::Internal,
            format!("The gateway could not estimate this request ({what})."),
        )
    };
    // The semaphore is never closed.
    let permit = permits()
        .acquire()
        .await
        .map_err(|_| failed("pool closed"))?;
    // The slot goes with the job, not with this future: a client that hangs up cannot free it while
    // its job still runs (a blocking job cannot be cancelled).
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        job()
    })
    .await
    .map_err(|_| failed("estimate aborted"))
}
