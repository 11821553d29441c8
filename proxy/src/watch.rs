//! The file `ConfigSource`: the config files (the top-level file and every file it `extends`), read into
//! documents and reloaded on a `notify` watch of their directories and on `SIGHUP`. It owns the paths;
//! the reload state only applies what it reads.
//!
//! A config file caught mid-write must never be applied (a truncated file is often valid YAML that
//! silently drops keys), so a write alone never reloads:
//! - **Close events** (Linux inotify): the files are complete after a close-after-write
//!   (`IN_CLOSE_WRITE`), a rename into place (`IN_MOVED_TO`, atomic saves) or a link into place (a
//!   create no writer opens). A write (`IN_MODIFY`) means a writer holds the file: the pending reload
//!   waits for its close, however long it pauses.
//! - **Stability** (backends without close events, and the poll watcher used when the native one
//!   cannot start): any change is a candidate, applied once every file is unchanged (size, mtime,
//!   content hash) across two reads one debounce apart, for at most `STABILITY_ROUNDS` rounds.
//!
//! Editors save in bursts (write temp file, rename, chmod); `Debouncer` turns a burst into one reload
//! once the directory has been quiet for the debounce window. It runs on tokio time, so tests drive it
//! with a paused clock.

use crate::document::{ConfigDocument, SourceError};
use crate::reload::{ApplyError, ConfigState};
use crate::source::ConfigSource;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::EventKind;
use pingora::server::ShutdownWatch;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What one file-system event on a watched config file says about its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Complete: closed after writing, renamed into place, or (stability mode) changed.
    Settled,
    /// A new name: complete when linked into place, not when a writer created it (whose open
    /// follows in the same system call).
    Created,
    /// Opened; inotify does not say whether for writing.
    Opened,
    /// Closed without writing.
    ClosedUnwritten,
    /// Written, by a writer that may still hold the file open.
    Written,
}

/// How file events become reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Reload after close-after-write, rename or link; a write alone waits for its close.
    CloseEvents,
    /// Reload once the files stop changing (for backends that report no closes).
    Stability,
}

/// The meaning of an event of `kind` for a watched file, or `None` when it is irrelevant (metadata,
/// removal: there is nothing new to load).
pub fn classify(kind: &EventKind, detection: Detection) -> Option<Signal> {
    use Signal::*;
    if detection == Detection::Stability {
        return match kind {
            EventKind::Access(_) | EventKind::Other | EventKind::Any => None,
            _ => Some(Settled),
        };
    }
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Settled),
        EventKind::Access(AccessKind::Close(_)) => Some(ClosedUnwritten),
        EventKind::Access(AccessKind::Open(_)) => Some(Opened),
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(Settled),
        EventKind::Create(_) => Some(Created),
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
            Some(Written)
        }
        _ => None,
    }
}

/// Where the watched files stand, from the signals seen since the last reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    Ready,
    Created,
    /// Created and then opened: a writer unless it closes without writing.
    MaybeWriting,
    Writing,
}

impl Pending {
    fn on(self, s: Signal) -> Pending {
        match (self, s) {
            (_, Signal::Settled) => Pending::Ready,
            (_, Signal::Written) => Pending::Writing,
            (_, Signal::Created) => Pending::Created,
            (Pending::Created, Signal::Opened) => Pending::MaybeWriting,
            (Pending::MaybeWriting, Signal::ClosedUnwritten) => Pending::Ready,
            (p, _) => p,
        }
    }

    fn loadable(self) -> bool {
        matches!(self, Pending::Ready | Pending::Created)
    }
}

/// Turns signals into reloads: `next` returns once the files are loadable and `window` has passed
/// without a new event.
pub struct Debouncer {
    rx: mpsc::UnboundedReceiver<Signal>,
    window: Duration,
}

impl Debouncer {
    pub fn new(rx: mpsc::UnboundedReceiver<Signal>, window: Duration) -> Self {
        Debouncer { rx, window }
    }

    /// Waits for loadable files, then for quiet; returns how many events that took, or `None` when
    /// every sender is gone first.
    pub async fn next(&mut self) -> Option<usize> {
        let mut state = Pending::Nothing;
        let mut n = 0;
        loop {
            if !state.loadable() {
                state = state.on(self.rx.recv().await?);
                n += 1;
                continue;
            }
            let deadline = Instant::now() + self.window;
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(s) => { state = state.on(s); n += 1; }
                    None => return Some(n),
                },
                _ = tokio::time::sleep_until(deadline) => return Some(n),
            }
        }
    }
}

/// Most debounce windows the stability check waits for the files to stop changing.
pub const STABILITY_ROUNDS: usize = 20;

/// Whether `read` (a fingerprint of the files) returns the same value twice in a row, `window` apart,
/// within `rounds` tries.
pub async fn until_stable<T: PartialEq, F: std::future::Future<Output = T>>(
    mut read: impl FnMut() -> F,
    window: Duration,
    rounds: usize,
) -> bool {
    let mut last = read().await;
    for _ in 0..rounds {
        tokio::time::sleep(window).await;
        let now = read().await;
        if now == last {
            return true;
        }
        last = now;
    }
    false
}

/// Size, modification time and content hash of each file (`None` for one that cannot be read).
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
    use std::hash::{Hash, Hasher};
    use std::io::Read;
    let one = |f: &Path| {
        let file = std::fs::File::open(f).ok()?;
        let meta = file.metadata().ok()?;
        let mut bytes = Vec::new();
        file.take(leaky_config::MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        Some((meta.len(), meta.modified().ok()?, h.finish()))
    };
    files.iter().map(|f| one(f)).collect()
}

/// The config files as a source of documents.
pub struct FileSource {
    root: PathBuf,
    /// Quiet period after the last file event before a reload.
    debounce: Duration,
    /// The files of the document serving now (`extends` included): what the watch reacts to.
    watched: Arc<ArcSwap<Vec<PathBuf>>>,
}

impl FileSource {
    /// The source of the config at `root`; `watch_files` tells it which files the serving one read.
    pub fn new(root: PathBuf, debounce: Duration) -> Self {
        FileSource {
            root,
            debounce,
            watched: Arc::default(),
        }
    }

    /// The top-level config file.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The serving document's files; set after each document from here is applied.
    pub fn watch_files(&self, files: Vec<PathBuf>) {
        self.watched.store(Arc::new(files));
    }

    fn files(&self) -> Vec<PathBuf> {
        self.watched.load().to_vec()
    }
}

/// Forwards the signals of events on the serving config's files.
fn handler(
    watched: Arc<ArcSwap<Vec<PathBuf>>>,
    tx: mpsc::UnboundedSender<Signal>,
    detection: Detection,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    let names = |files: &[PathBuf]| -> HashSet<OsString> {
        files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
            .collect()
    };
    // Watched names are re-read on every event, so adding a file through `extends` is picked up after
    // the reload that introduced it.
    move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let Some(signal) = classify(&ev.kind, detection) else {
            return;
        };
        // A rename reported as one event names its source first: only its destination matters.
        let paths = match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.get(1..),
            _ => None,
        }
        .unwrap_or(&ev.paths[..]);
        let wanted = names(&watched.load());
        if paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| wanted.contains(n)))
        {
            let _ = tx.send(signal);
        }
    }
}

impl FileSource {
    fn watch(
        &self,
        tx: mpsc::UnboundedSender<Signal>,
    ) -> Option<(Box<dyn notify::Watcher + Send>, Detection)> {
        use notify::{RecursiveMode, Watcher, WatcherKind};
        let native = if notify::RecommendedWatcher::kind() == WatcherKind::Inotify {
            Detection::CloseEvents
        } else {
            Detection::Stability
        };
        let (mut watcher, detection): (Box<dyn Watcher + Send>, _) =
            match notify::recommended_watcher(handler(self.watched.clone(), tx.clone(), native)) {
                Ok(w) => (Box::new(w), native),
                Err(e) => {
                    tracing::warn!(error = %e, "no native file watcher; polling the config every second");
                    let config =
                        notify::Config::default().with_poll_interval(Duration::from_secs(1));
                    let h = handler(self.watched.clone(), tx, Detection::Stability);
                    match notify::PollWatcher::new(h, config) {
                        Ok(w) => (Box::new(w), Detection::Stability),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot watch the config; reload with SIGHUP");
                            return None;
                        }
                    }
                }
            };
        let dirs: HashSet<PathBuf> = self
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
        Some((watcher, detection))
    }

    /// In stability mode: waits until the files stop changing; `false` when they keep changing.
    async fn stable(&self) -> bool {
        let files = self.files();
        let read = || {
            let files = files.clone();
            async move {
                tokio::task::spawn_blocking(move || fingerprint(&files))
                    .await
                    .ok()
            }
        };
        until_stable(read, self.debounce, STABILITY_ROUNDS).await
    }

    /// Reloads on a blocking thread: parsing and building touch the disk and DNS.
    async fn reload_off_workers(self: &Arc<Self>, state: &Arc<ConfigState>) {
        let (source, state) = (self.clone(), state.clone());
        let _ = tokio::task::spawn_blocking(move || source.reload(&state)).await;
    }
}

/// `SIGHUP`s, forwarded to a channel (none when the signal cannot be listened for).
fn hangups() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut h) => {
            tokio::spawn(async move {
                while h.recv().await.is_some() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
    }
    rx
}

#[async_trait]
impl ConfigSource for FileSource {
    fn describe(&self) -> String {
        format!("config file `{}`", self.root.display())
    }

    fn fetch(&self) -> Result<ConfigDocument, SourceError> {
        leaky_config::load(&self.root)
            .map(|c| ConfigDocument::from_files(&self.root, c))
            .map_err(|e| SourceError::Invalid(e.0))
    }

    /// Reads the files again and applies them; on success the watch follows the new file set.
    fn reload(&self, state: &ConfigState) -> Result<u64, ApplyError> {
        let fetched = self.fetch();
        let files = fetched.as_ref().map(|d| d.config.files.clone()).ok();
        let applied = state.apply_fetched(fetched);
        if let (Ok(_), Some(files)) = (&applied, files) {
            self.watch_files(files);
        }
        applied
    }

    async fn run(self: Arc<Self>, state: Arc<ConfigState>, mut shutdown: ShutdownWatch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = self.watch(tx.clone());
        let detection = watcher.as_ref().map(|(_, d)| *d);
        // SIGHUP is an explicit request: it reloads at once, whatever the file events say.
        let mut hup_rx = hangups();
        drop(tx);
        let mut debouncer = Debouncer::new(rx, self.debounce);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = hup_rx.recv() => {
                    tracing::debug!("SIGHUP: reloading the config");
                    self.reload_off_workers(&state).await;
                }
                burst = debouncer.next(), if detection.is_some() => {
                    let Some(n) = burst else { return };
                    tracing::debug!(events = n, ?detection, "config change detected");
                    if detection == Some(Detection::Stability) && !self.stable().await {
                        tracing::warn!("the config files are still changing; not reloading them yet");
                        continue;
                    }
                    self.reload_off_workers(&state).await;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Signal::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_event_after_quiet() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Debouncer::new(rx, Duration::from_millis(100));
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(Settled).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx
        });
        assert_eq!(d.next().await, Some(5));
        // Last event at t=200ms, quiet window 100ms.
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let tx = feeder.await.unwrap();
        tx.send(Settled).unwrap();
        assert_eq!(d.next().await, Some(1));
        drop(tx);
        assert_eq!(d.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn separate_bursts_are_separate_events() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Debouncer::new(rx, Duration::from_millis(100));
        tx.send(Settled).unwrap();
        assert_eq!(d.next().await, Some(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(Settled).unwrap();
        tx.send(Settled).unwrap();
        assert_eq!(d.next().await, Some(2));
    }

    /// Feeds `signals` 10 ms apart, then holds the channel open for `hold`; returns when `next`
    /// returned, measured from the start.
    async fn fires_after(signals: &[Signal], hold: Duration) -> Option<Duration> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut d = Debouncer::new(rx, Duration::from_millis(100));
        let start = Instant::now();
        let signals = signals.to_vec();
        let feeder = tokio::spawn(async move {
            for s in signals {
                tx.send(s).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(hold).await;
        });
        let fired = tokio::select! {
            n = d.next() => n.map(|_| start.elapsed()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => None,
        };
        feeder.abort();
        fired
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waits_for_its_close_however_long_the_writer_pauses() {
        let minute = Duration::from_secs(60);
        // open(O_TRUNC) + write, then a writer paused for a minute: nothing to load.
        assert_eq!(fires_after(&[Opened, Written, Written], minute).await, None);
        // ... until it closes: 100 ms after the close.
        let got = fires_after(&[Opened, Written, Written, Settled], minute).await;
        assert_eq!(got, Some(Duration::from_millis(130)));
        // A second writer starting within the window cancels the first one's reload.
        assert_eq!(
            fires_after(&[Written, Settled, Written], minute).await,
            None
        );
        // Readers (our own reload among them) change nothing.
        assert_eq!(fires_after(&[Opened, ClosedUnwritten], minute).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_loads_when_linked_into_place_but_not_while_its_writer_holds_it() {
        let minute = Duration::from_secs(60);
        // link(2) / symlink(2): a new name, complete at once.
        assert!(fires_after(&[Created], minute).await.is_some());
        // open(O_CREAT): the writer's open follows; wait for its close.
        assert_eq!(fires_after(&[Created, Opened], minute).await, None);
        assert!(fires_after(&[Created, Opened, Written, Settled], minute)
            .await
            .is_some());
        // ... unless that open was a reader's.
        assert!(fires_after(&[Created, Opened, ClosedUnwritten], minute)
            .await
            .is_some());
        // Renamed into place (atomic save).
        assert!(fires_after(&[Settled], minute).await.is_some());
    }

    #[test]
    fn inotify_events_map_to_signals() {
        use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};
        let close = |k| classify(&k, Detection::CloseEvents);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(close(write), Some(Written));
        assert_eq!(
            close(EventKind::Access(AccessKind::Close(AccessMode::Write))),
            Some(Settled)
        );
        assert_eq!(
            close(EventKind::Modify(ModifyKind::Name(RenameMode::To))),
            Some(Settled)
        );
        assert_eq!(close(EventKind::Create(CreateKind::File)), Some(Created));
        assert_eq!(close(EventKind::Remove(RemoveKind::File)), None);
        assert_eq!(
            close(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))),
            None
        );
        // Without close events every change is a candidate for the stability check.
        assert_eq!(classify(&write, Detection::Stability), Some(Settled));
    }

    #[tokio::test(start_paused = true)]
    async fn stability_needs_two_equal_reads_a_window_apart() {
        let window = Duration::from_millis(100);
        let start = Instant::now();
        let mut reads = 0;
        // Changes on the first two reads (a writer still going), then stays.
        let changing_then_still = || {
            reads += 1;
            std::future::ready(reads.min(3))
        };
        assert!(until_stable(changing_then_still, window, 5).await);
        assert_eq!(start.elapsed(), 3 * window);
        // A file that keeps changing is given up on after the bounded number of rounds.
        let mut n = 0;
        let always_changing = || {
            n += 1;
            std::future::ready(n)
        };
        assert!(!until_stable(always_changing, window, 5).await);
    }
}
