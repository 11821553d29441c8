//! Where config comes from: the `ConfigSource` seam. A source produces documents (`document.rs`) and
//! hands them to the reload state (`ConfigState::apply`); it decides when, the state decides whether.
//!
//! - `FileSource` (`watch.rs`): the config files, reloaded on inotify close events and `SIGHUP`.
//! - `PushedSource` (here): documents pushed over a channel, each answered with the applied version or
//!   the typed reason it was refused (an ACK/NACK, the shape a control-plane stream needs).
//!
//! `POST /admin/reload` asks the running source to reload (`ConfigSource::reload`): files are read
//! again, a pushed source re-applies the last document it received.

use crate::document::{ConfigDocument, SourceError};
use crate::reload::{ApplyError, ConfigState};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A supplier of config documents.
#[async_trait]
pub trait ConfigSource: Send + Sync + 'static {
    /// For logs: what this source reads (`config file `gateway.yaml``).
    fn describe(&self) -> String;

    /// The current document, produced now. Blocking (disk, DNS): call it off the async workers.
    fn fetch(&self) -> Result<ConfigDocument, SourceError>;

    /// Fetches and applies, recording a failure in the state's status; blocking like `fetch`.
    fn reload(&self, state: &ConfigState) -> Result<u64, ApplyError> {
        state.apply_fetched(self.fetch())
    }

    /// What `/admin/config` shows about the source under `control_plane` (a control-plane source's
    /// URL, stream and version); `None` for sources with nothing to add.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Delivers documents to `state` as they change, until `shutdown`.
    async fn run(self: Arc<Self>, state: Arc<ConfigState>, shutdown: ShutdownWatch);
}

/// The background service that runs a source for the life of the server.
pub struct SourceService {
    pub source: Arc<dyn ConfigSource>,
    pub state: Arc<ConfigState>,
}

#[async_trait]
impl BackgroundService for SourceService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.source.clone().run(self.state.clone(), shutdown).await;
    }
}

/// The outcome of one pushed document: its applied version, or why it was refused.
pub type Ack = Result<u64, ApplyError>;

struct Push {
    document: Result<ConfigDocument, SourceError>,
    ack: oneshot::Sender<Ack>,
}

/// A source fed by pushes (`PushHandle::push`), applied in order.
pub struct PushedSource {
    name: String,
    rx: tokio::sync::Mutex<mpsc::Receiver<Push>>,
    /// The last document received, re-applied by `reload`.
    last: Mutex<Option<ConfigDocument>>,
}

/// The sending side of a `PushedSource`.
#[derive(Clone)]
pub struct PushHandle {
    tx: mpsc::Sender<Push>,
}

impl PushedSource {
    /// A source named `name` (for logs and errors) and the handle that feeds it.
    pub fn new(name: &str) -> (Arc<Self>, PushHandle) {
        // Pushes are whole documents applied one at a time: a short queue is plenty.
        let (tx, rx) = mpsc::channel(4);
        let source = PushedSource {
            name: name.to_string(),
            rx: tokio::sync::Mutex::new(rx),
            last: Mutex::new(None),
        };
        (Arc::new(source), PushHandle { tx })
    }
}

impl PushHandle {
    /// Pushes a document (or the reason the sender has none) and waits until it was applied or refused.
    pub async fn push(&self, document: Result<ConfigDocument, SourceError>) -> Ack {
        let stopped = || ApplyError::Unavailable("the config source stopped".into());
        let (ack, answer) = oneshot::channel();
        self.tx
            .send(Push { document, ack })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[async_trait]
impl ConfigSource for PushedSource {
    fn describe(&self) -> String {
        format!("config pushed by {}", self.name)
    }

    fn fetch(&self) -> Result<ConfigDocument, SourceError> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.clone()
            .ok_or_else(|| SourceError::Unavailable(format!("{}: nothing pushed yet", self.name)))
    }

    async fn run(self: Arc<Self>, state: Arc<ConfigState>, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        loop {
            let push = tokio::select! {
                _ = shutdown.changed() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            if let Ok(doc) = &push.document {
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(doc.clone());
            }
            let state = state.clone();
            // Building touches DNS and files: keep it off the async workers.
            let applied = tokio::task::spawn_blocking(move || state.apply_fetched(push.document))
                .await
                .unwrap_or_else(|e| Err(ApplyError::Unavailable(format!("apply failed: {e}"))));
            let _ = push.ack.send(applied);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::document::Origin;
    use leaky_config::ConfigError;

    const BASE: &str = "server:\n  listen: 127.0.0.1:18080\n  admin_listen: 127.0.0.1:19090\n\
providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n    \
filters: [{ kind: api-key }]\n";

    const KEY: &str = "tiers:\n  pro: { priority: normal }\nkeys:\n  - id: k1\n    \
sha256: ba95025563ae64f9e484181b3a02aa6b1f12f02d867fb056fb648b8ce6c7af86\n    \
user: u1\n    tier: pro\n";

    /// A document as a control plane would push it, from YAML text.
    fn pushed(yaml: &str, version: &str) -> ConfigDocument {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushed.yaml");
        std::fs::write(&path, yaml).unwrap();
        ConfigDocument {
            config: leaky_config::load(&path).unwrap(),
            version: version.into(),
            origin: Origin::Pushed {
                from: "test".into(),
            },
        }
    }

    fn first(doc: ConfigDocument) -> Arc<ConfigState> {
        let boot = crate::bootstrap::Bootstrap::of(&doc.config.server);
        let background = crate::background::Background::start().unwrap();
        ConfigState::new(doc, boot, &background).unwrap()
    }

    #[tokio::test]
    async fn an_invalid_push_keeps_the_last_good_and_every_outcome_is_reported() {
        let state = first(pushed(BASE, "v1"));
        let (source, handle) = PushedSource::new("test");
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(source.clone().run(state.clone(), shutdown));

        let invalid = SourceError::Invalid(vec![ConfigError {
            file: "pushed".into(),
            pos: None,
            message: "`routes` must be a list".into(),
        }]);
        let nack = handle.push(Err(invalid)).await.unwrap_err();
        assert!(matches!(nack, ApplyError::Invalid(_)), "{nack}");
        let status = state.status();
        assert_eq!(state.snapshot().version, 1, "the last good keeps serving");
        assert_eq!(status.last_result, "error");
        assert_eq!(status.last_errors, ["pushed: `routes` must be a list"]);
        assert_eq!(status.source_version, "v1");

        // Only the keys change: applied as the next version, reported with its source version.
        let version = handle.push(Ok(pushed(&format!("{BASE}{KEY}"), "v2"))).await;
        assert_eq!(version.unwrap(), 2);
        let status = state.status();
        assert_eq!(
            (status.last_result, status.last_errors.len()),
            ("success", 0)
        );
        assert_eq!(status.source_version, "v2");
        assert_eq!(
            status.origin,
            Some(Origin::Pushed {
                from: "test".into()
            })
        );
        assert_eq!(state.snapshot().keys.len(), 1);

        // An explicit reload re-applies the last document received.
        let s = source.clone();
        let st = state.clone();
        let again = tokio::task::spawn_blocking(move || s.reload(&st)).await;
        assert_eq!(again.unwrap().unwrap(), 3);
        assert_eq!(state.status().source_version, "v2");
    }

    #[tokio::test]
    async fn a_pushed_source_has_nothing_to_reload_before_its_first_push() {
        let state = first(pushed(BASE, "v1"));
        let (source, _handle) = PushedSource::new("cp");
        let e = tokio::task::spawn_blocking({
            let state = state.clone();
            move || source.reload(&state)
        })
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(e.to_string(), "cp: nothing pushed yet");
        assert_eq!(state.status().last_result, "error");
        assert_eq!(state.snapshot().version, 1);
    }

    #[tokio::test]
    async fn bootstrap_changes_are_pending_a_restart_and_the_running_values_stay() {
        let state = first(pushed(BASE, "v1"));
        let moved = BASE.replace("127.0.0.1:18080", "127.0.0.1:18081");
        let s = state.clone();
        let v = tokio::task::spawn_blocking(move || s.apply(pushed(&moved, "v2")))
            .await
            .unwrap();
        assert_eq!(v.unwrap(), 2);
        assert_eq!(
            state.status().pending_restart,
            ["server.listen: 127.0.0.1:18080 → 127.0.0.1:18081 (restart to apply)"]
        );
        let running = state.snapshot().config.server.listen;
        assert_eq!(running, state.bootstrap().listen);
        assert_eq!(running.port(), 18080);
    }
}
