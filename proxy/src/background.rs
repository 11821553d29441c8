//! The background service: the runtime every long-lived task of the data plane runs on (the limiter's
//! Redis driver, settler and eviction, deployment health checks) and the usage queue, created once in
//! `server::build` and handed to whoever spawns or records.
//!
//! Pingora gives each of its services a runtime of its own, and those stop with the server; this one
//! outlives config versions and must exist before the first snapshot is built (the limiter spawns its
//! tasks then), so it is owned here rather than borrowed from a Pingora service.
//!
//! Shutdown: [`Background::service`] is added to the Pingora server. It drains the usage queue every
//! [`DRAIN_EVERY`] and flushes it when the shutdown signal arrives; requests still finishing in the
//! grace period keep queueing, so [`Background::shutdown`], called once `Server::run` has returned
//! (every proxy runtime has exited, nothing can queue any more), drains the rest and stops the
//! runtime. Without it the records of the last ~50 ms before exit were lost.

use crate::usage_log::{UsageSink, CAPACITY, DRAIN_EVERY};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::{EnterGuard, Handle, Runtime};

/// The shutdown flush of usage events waits this long (the publisher's own flush takes at most 5 s).
const EVENTS_FLUSH_WITHIN: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("starting the background runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A handle to the background service; clones share it.
#[derive(Clone)]
pub struct Background {
    inner: Arc<Inner>,
}

struct Inner {
    /// Spawns without a lock; valid for as long as the runtime runs.
    handle: Handle,
    /// Taken by `shutdown` (or on drop): the only place the runtime is stopped.
    runtime: Mutex<Option<Runtime>>,
    usage: UsageSink,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may go away on a proxy thread; a runtime dropped the ordinary way from
        // async code panics, `shutdown_background` never blocks.
        let rt = self
            .runtime
            .get_mut()
            .map_or_else(|p| p.into_inner().take(), Option::take);
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

impl Background {
    /// Starts the runtime (one worker thread: the tasks on it are light and mostly asleep).
    pub fn start() -> Result<Self, BackgroundError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leaky-background")
            .enable_all()
            .build()
            .map_err(BackgroundError::Runtime)?;
        Ok(Background {
            inner: Arc::new(Inner {
                handle: runtime.handle().clone(),
                runtime: Mutex::new(Some(runtime)),
                usage: UsageSink::new(CAPACITY),
            }),
        })
    }

    /// Runs `fut` on the background runtime, detached. After `shutdown` it is dropped unpolled.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.inner.handle.spawn(fut));
    }

    /// Makes the background runtime current, for code that spawns with `tokio::spawn` (the settler).
    pub fn enter(&self) -> EnterGuard<'_> {
        self.inner.handle.enter()
    }

    /// Starts the Kafka publisher of usage events when `events.kafka` is set (once, at start: the
    /// section is not reloaded). `source` is the events' CloudEvents `source`.
    pub fn start_events(
        &self,
        kafka: Option<&leaky_config::model::events::Kafka>,
        source: String,
    ) -> Result<(), crate::events::EventsError> {
        let Some(k) = kafka else { return Ok(()) };
        let _rt = self.enter();
        let events = crate::events::Events::start(k, source)?;
        tracing::info!(brokers = ?k.brokers, topic = %k.topic, "usage events go to Kafka");
        self.inner.usage.attach_events(events);
        Ok(())
    }

    /// Where the request path queues usage records.
    pub fn usage(&self) -> &UsageSink {
        &self.inner.usage
    }

    /// The Pingora service that drains the usage queue and flushes it at the shutdown signal.
    pub fn service(&self) -> GenBackgroundService<UsageDrain> {
        let mut svc = background_service(
            "background",
            UsageDrain {
                sink: self.inner.usage.clone(),
            },
        );
        svc.threads = Some(1);
        svc
    }

    /// The last flush, after the server stopped: writes every queued record, then stops the runtime.
    pub fn shutdown(&self) {
        let flushed = self.inner.usage.drain();
        if flushed > 0 {
            tracing::info!(flushed, "background service stopped; usage records flushed");
        }
        // Kafka gets what the publisher holds (or it is spooled) before the runtime stops.
        if let Some(events) = self.inner.usage.events() {
            events.close(EVENTS_FLUSH_WITHIN);
        }
        let rt = self
            .inner
            .runtime
            .lock()
            .map_or_else(|p| p.into_inner().take(), |mut r| r.take());
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

/// Drains the usage queue every [`DRAIN_EVERY`] and at the shutdown signal.
pub struct UsageDrain {
    sink: UsageSink,
}

#[async_trait]
impl BackgroundService for UsageDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        let mut signalled = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.sink.drain();
                }
                // Once signalled (or if the sender is gone) this branch is off: `changed` would
                // return at once from then on.
                r = shutdown.changed(), if !signalled => {
                    signalled = true;
                    let flushed = self.sink.drain();
                    if r.is_ok() {
                        tracing::info!(flushed, "shutdown: usage records flushed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
