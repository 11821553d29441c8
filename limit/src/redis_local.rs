//! A Redis connection per calling thread, so a request's round trip stays on its own runtime.
//!
//! A multiplexed connection has a driver task that owns the socket, spawned on the runtime that
//! made the connection. Shared by every thread, each command a proxy worker sends crosses runtimes
//! twice: the command wakes the driver's runtime, the reply wakes the worker's (an eventfd write and
//! an extra `epoll_wait` each). Per thread, the driver runs on the caller's runtime: the command and
//! its reply are same-runtime wake-ups, and only the socket's own syscalls remain.
//!
//! The first call on a thread starts the connection in the background (a task on the caller's
//! runtime) and uses the store's shared connection meanwhile, so no request ever waits for a
//! connect. The lookup is a thread-local scan of the few stores this thread has used: no lock.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Pause between attempts of a thread's connection that failed to come up.
const RETRY: Duration = Duration::from_secs(1);

/// What each thread's connection is made from; its threads' connections close with it.
pub(crate) struct PerThread {
    id: u64,
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Threads hold a `Weak` of it: a dropped store's slots are pruned and its connects stop.
    alive: Arc<()>,
}

struct Slot {
    id: u64,
    alive: Weak<()>,
    conn: Arc<OnceLock<ConnectionManager>>,
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

impl PerThread {
    pub(crate) fn new(client: redis::Client, config: ConnectionManagerConfig) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        PerThread {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            client,
            config,
            alive: Arc::new(()),
        }
    }

    /// This thread's connection once it is up. `None` while it is being made, or outside a tokio
    /// runtime: the caller uses the shared connection then.
    pub(crate) fn get(&self) -> Option<ConnectionManager> {
        SLOTS.with(|slots| {
            let mut slots = slots.try_borrow_mut().ok()?;
            if let Some(slot) = slots.iter().find(|s| s.id == self.id) {
                return slot.conn.get().cloned();
            }
            let rt = tokio::runtime::Handle::try_current().ok()?;
            slots.retain(|s| s.alive.strong_count() > 0);
            let conn = Arc::new(OnceLock::new());
            slots.push(Slot {
                id: self.id,
                alive: Arc::downgrade(&self.alive),
                conn: conn.clone(),
            });
            rt.spawn(connect(
                self.client.clone(),
                self.config.clone(),
                Arc::downgrade(&self.alive),
                conn,
            ));
            None
        })
    }
}

/// Makes a thread's connection on the current runtime (so its driver task runs there), retrying
/// until it is up or the store is gone. Once up, the connection manager reconnects by itself.
async fn connect(
    client: redis::Client,
    config: ConnectionManagerConfig,
    alive: Weak<()>,
    slot: Arc<OnceLock<ConnectionManager>>,
) {
    while alive.strong_count() > 0 {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(conn) => {
                let _ = slot.set(conn);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "per-thread Redis connection failed; the shared one serves");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
