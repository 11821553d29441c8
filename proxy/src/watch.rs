//! Triggers for reloads: a debounced `notify` watch on the config files' directories, and `SIGHUP`.
//!
//! Editors save in bursts (write temp file, rename, chmod); `Debouncer` turns a burst into one reload
//! once the directory has been quiet for the debounce window. It runs on tokio time, so tests drive it
//! with a paused clock.

use crate::reload::ConfigState;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Collapses a burst of events into one: `next` returns once `window` has passed without a new event.
pub struct Debouncer<T> {
    rx: mpsc::UnboundedReceiver<T>,
    window: Duration,
}

impl<T> Debouncer<T> {
    pub fn new(rx: mpsc::UnboundedReceiver<T>, window: Duration) -> Self {
        Debouncer { rx, window }
    }

    /// Waits for an event, then for quiet; returns how many events the burst had, or `None` when every
    /// sender is gone.
    pub async fn next(&mut self) -> Option<usize> {
        self.rx.recv().await?;
        let mut n = 1;
        let mut deadline = Instant::now() + self.window;
        loop {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(_) => { n += 1; deadline = Instant::now() + self.window; }
                    None => return Some(n),
                },
                _ = tokio::time::sleep_until(deadline) => return Some(n),
            }
        }
    }
}

/// Reason for a reload.
#[derive(Debug)]
enum Trigger {
    FileChanged,
    Hangup,
}

/// Background service: watches the config and reloads on change or `SIGHUP`.
pub struct ConfigWatcher {
    pub state: Arc<ConfigState>,
    pub debounce: Duration,
}

impl ConfigWatcher {
    fn watch(&self, tx: mpsc::UnboundedSender<Trigger>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let names = |files: &[PathBuf]| -> HashSet<OsString> {
            files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
                .collect()
        };
        // Watched names are re-read from the active config on every event, so adding a file through
        // `extends` is picked up after the reload that introduced it.
        let state = self.state.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let wanted = names(&state.files());
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| wanted.contains(n)))
            {
                let _ = tx.send(Trigger::FileChanged);
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the config; reload with SIGHUP");
                return None;
            }
        };
        let dirs: HashSet<PathBuf> = self
            .state
            .files()
            .iter()
            .map(|f| {
                f.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| ".".into())
            })
            .collect();
        for d in dirs {
            if let Err(e) = watcher.watch(&d, RecursiveMode::NonRecursive) {
                tracing::error!(dir = %d.display(), error = %e, "cannot watch config directory");
            }
        }
        Some(watcher)
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let _watcher = self.watch(tx.clone());
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let hup_tx = tx.clone();
        let hup = async move {
            if let Some(h) = hangup.as_mut() {
                while h.recv().await.is_some() {
                    let _ = hup_tx.send(Trigger::Hangup);
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(hup);
        let mut debouncer = Debouncer::new(rx, self.debounce);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = &mut hup => {}
                burst = debouncer.next() => {
                    let Some(n) = burst else { return };
                    tracing::debug!(events = n, trigger = ?Trigger::FileChanged, "config change detected");
                    let state = self.state.clone();
                    // Parsing and building touch the disk and DNS: keep them off the async workers.
                    let _ = tokio::task::spawn_blocking(move || state.reload()).await;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_event_after_quiet() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Debouncer::new(rx, Duration::from_millis(100));
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx
        });
        assert_eq!(d.next().await, Some(5));
        // Last event at t=200ms, quiet window 100ms.
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let tx = feeder.await.unwrap();
        tx.send(()).unwrap();
        assert_eq!(d.next().await, Some(1));
        drop(tx);
        assert_eq!(d.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn separate_bursts_are_separate_events() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Debouncer::new(rx, Duration::from_millis(100));
        tx.send(()).unwrap();
        assert_eq!(d.next().await, Some(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        assert_eq!(d.next().await, Some(2));
    }
}
