//! The last good snapshot on local disk (`--config-cache`): what a proxy whose control plane is down at
//! boot starts from. Written atomically (a temp file in the same directory, then a rename), so a crash
//! mid-write leaves the previous file; and throttled (at most one write per [`MIN_INTERVAL`], the
//! latest state always written last) by a task of its own, never on the request path.

use super::event::key_spec;
use leaky_config::KeySpec;
use leaky_filters::KeyIndex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// At most one write per interval: a burst of key deltas costs one write, not one per delta.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The state persisted: the control plane's version and hash, the snapshot's document and the keys
/// live now (the document's, with every delta since applied).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastGood {
    pub version: u64,
    pub hash: String,
    pub document: String,
    pub keys: Vec<KeySpec>,
}

/// What is queued for the writer: cheap to make per delta (shared pointers); the key list is only
/// written out, once per write, by the writer task.
#[derive(Debug, Clone)]
pub struct Pending {
    pub version: u64,
    pub hash: String,
    pub document: Arc<str>,
    pub keys: Arc<KeyIndex>,
}

impl Pending {
    fn last_good(&self) -> LastGood {
        LastGood {
            version: self.version,
            hash: self.hash.clone(),
            document: self.document.to_string(),
            keys: self.keys.keys().iter().map(key_spec).collect(),
        }
    }
}

/// Reads the cache file.
pub fn read(path: &Path) -> Result<LastGood, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a last-good snapshot: {e}"))
}

/// Writes `state` to `path` atomically, creating the directory if needed.
pub fn write(path: &Path, state: &LastGood) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile_in(&dir, path)?;
    let body = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::io::Write::write_all(&mut tmp.1, &body)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

/// A new file beside `path` (same file system, so the rename is atomic).
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "last-good.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    Ok((tmp, file))
}

/// The sending side: `save` replaces what the writer task writes next.
#[derive(Clone)]
pub struct Persister {
    tx: watch::Sender<Option<Pending>>,
}

impl Persister {
    /// A persister writing to `path`, and the task that writes (spawn it once).
    pub fn new(path: PathBuf) -> (Persister, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = watch::channel(None);
        (Persister { tx }, writer(path, rx))
    }

    /// Queues `state` to be written; returns at once.
    pub fn save(&self, state: Pending) {
        self.tx.send_replace(Some(state));
    }
}

/// Writes the latest state whenever it changes, then rests `MIN_INTERVAL`; ends with the persister.
async fn writer(path: PathBuf, mut rx: watch::Receiver<Option<Pending>>) {
    while rx.changed().await.is_ok() {
        let Some(pending) = rx.borrow_and_update().clone() else {
            continue;
        };
        let p = path.clone();
        let version = pending.version;
        match tokio::task::spawn_blocking(move || write(&p, &pending.last_good())).await {
            Ok(Ok(())) => {
                tracing::debug!(version, path = %path.display(), "last-good snapshot saved")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "last-good snapshot not saved")
            }
            Err(e) => tracing::warn!(error = %e, "last-good snapshot writer failed"),
        }
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(version: u64) -> LastGood {
        LastGood {
            version,
            hash: format!("h{version}"),
            document: "server: {}\n".into(),
            keys: vec![],
        }
    }

    #[test]
    fn a_written_state_reads_back_and_no_temp_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p.last-good.json");
        write(&path, &state(3)).unwrap();
        write(&path, &state(4)).unwrap();
        let back = serde_json::to_value(read(&path).unwrap()).unwrap();
        assert_eq!(back, serde_json::to_value(state(4)).unwrap());
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p.last-good.json"]);
        assert!(read(&dir.path().join("missing")).is_err());
    }

    fn pending(version: u64) -> Pending {
        Pending {
            version,
            hash: format!("h{version}"),
            document: "server: {}\n".into(),
            keys: Arc::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_written_at_most_once_per_interval_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let (p, task) = Persister::new(path.clone());
        let task = tokio::spawn(task);
        p.save(pending(1));
        // The first state is written at once.
        while read(&path).map(|s| s.version).ok() != Some(1) {
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let written = tokio::time::Instant::now();
        p.save(pending(2));
        p.save(pending(3));
        while read(&path).map(|s| s.version).ok() != Some(3) {
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_millis(10)).await;
            assert_ne!(
                read(&path).unwrap().version,
                2,
                "a superseded state was written"
            );
        }
        // The writer's rest began when the first write finished, at most one 1 ms step before `written`.
        let rested = written.elapsed() + Duration::from_millis(1);
        assert!(rested >= MIN_INTERVAL, "{rested:?}");
        drop(p);
        task.await.unwrap();
    }
}
