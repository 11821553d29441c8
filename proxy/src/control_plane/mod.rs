//! The control-plane `ConfigSource`: the proxy side of the watch protocol (`docs/config-protocol.md`).
//!
//! - `boot`: the first document: the control plane's first `snapshot` (waited for, bounded), else the
//!   last-good cache on disk, else a start-up error naming both.
//! - `session` (this source's `run`): the watch stream, reconnected with backoff; a `snapshot` is a
//!   full apply (`ConfigState::apply`), a `keys` delta only swaps the key index
//!   (`ConfigState::apply_keys`); every version is ACKed or NACKed; each good state is persisted.
//! - `client` (HTTP calls, NDJSON events with a silence limit), `ndjson` (line framing), `event` (the
//!   protocol's events and key entries), `backoff`, `cache` (the last-good file, written atomically and
//!   throttled), `registry` (registration and heartbeats).
//!
//! Nothing on the request path waits for any of it: requests read the snapshot and key index this
//! source publishes, and keep doing so while the control plane is away.

mod backoff;
mod boot;
mod cache;
mod client;
mod event;
mod ndjson;
mod registry;
mod session;

pub use boot::{boot, BootError, BOOT_WAIT};
pub use cache::LastGood;
// The client half of the protocol is public for the contract tests (proxy/tests/pact_control_plane.rs,
// docs/contracts.md): they drive this very code against a Pact mock server.
pub use client::{Endpoint, StreamError, WatchStream};
pub use event::{Event, RevokedToken};
pub use registry::{registration, Identity};

use crate::document::{ConfigDocument, Origin, SourceError};
use crate::reload::{ApplyError, ConfigState};
use crate::source::ConfigSource;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How to reach the control plane (from the command line).
#[derive(Clone)]
pub struct ControlPlaneOptions {
    /// Base URL, e.g. `http://127.0.0.1:9300`.
    pub url: String,
    /// This proxy's id in ACKs and the registry.
    pub instance: String,
    /// Bearer token for every call.
    pub token: String,
    /// The last-good snapshot file.
    pub cache: PathBuf,
    /// TLS towards an `https://` control plane.
    pub tls: ClientTls,
}

/// How the proxy's control-plane client does TLS: a private CA to trust (instead of the webpki roots)
/// and a client certificate for mutual TLS (the control plane's `--tls-client-ca`).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    /// Certificate chain and private key (PEM files).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ControlPlaneOptions {
    /// Without the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneOptions")
            .field("url", &self.url)
            .field("instance", &self.instance)
            .field("cache", &self.cache)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What `/admin/config` shows under `control_plane`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub url: String,
    pub instance: String,
    /// Whether the watch stream is open now.
    pub connected: bool,
    /// The control-plane version applied (snapshot or key delta), and its hash.
    pub version: Option<u64>,
    pub hash: Option<String>,
    /// Where the first document came from: `control_plane` or `cache`.
    pub booted_from: &'static str,
    /// Streams opened since start.
    pub connects: u64,
    /// Why the stream last ended or could not open.
    pub last_error: Option<String>,
    /// The last version refused (NACKed), with its errors.
    pub refused: Option<Refused>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub version: u64,
    pub errors: Vec<String>,
}

/// The answer to one version: ACK, or NACK with every error.
type Outcome = Result<(), Vec<String>>;

/// The last-good cache's writer task, not yet spawned.
type Writer = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The snapshot serving now, as the control plane sent it.
#[derive(Debug, Clone)]
struct Running {
    version: u64,
    hash: String,
    document: Arc<str>,
}

/// The source: see the module header.
pub struct ControlPlaneSource {
    opts: ControlPlaneOptions,
    endpoint: client::Endpoint,
    running: Mutex<Running>,
    status: Mutex<WatchStatus>,
    /// The stream boot opened, continued by `run` (no second connection at start).
    handover: Mutex<Option<client::WatchStream>>,
    /// The boot document's outcome, reported by `run`: the ACK (or NACK) of the first version.
    boot_report: Mutex<Option<(u64, Outcome)>>,
    persister: cache::Persister,
    /// The persister's writer, spawned by `run`.
    writer: Mutex<Option<Writer>>,
    started_at: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControlPlaneSource {
    /// The name pushed documents' problems are reported against.
    fn label(&self, version: u64) -> PathBuf {
        PathBuf::from(format!("config pushed by {} v{version}", self.opts.url))
    }

    /// Relative paths in pushed documents resolve against the cache file's directory.
    fn base_dir(&self) -> PathBuf {
        base_dir(&self.opts.cache)
    }

    fn origin(&self) -> Origin {
        Origin::Pushed {
            from: self.opts.url.clone(),
        }
    }

    /// The control-plane version running now.
    fn running_version(&self) -> u64 {
        lock(&self.running).version
    }

    /// Queues the state now serving for the last-good cache.
    fn persist(&self, state: &ConfigState) {
        let r = lock(&self.running).clone();
        self.persister.save(cache::Pending {
            version: r.version,
            hash: r.hash,
            document: r.document,
            keys: state.keys(),
        });
    }
}

/// The cache file's directory (`.` for a bare file name).
fn base_dir(cache: &Path) -> PathBuf {
    match cache.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A pushed document, validated as a file is, `${ENV}` resolved in this process's environment.
fn load_document(
    label: &Path,
    text: &str,
    base_dir: &Path,
) -> Result<leaky_config::Config, SourceError> {
    leaky_config::load_text(label, text, base_dir, &|k| std::env::var(k).ok())
        .map_err(|e| SourceError::Invalid(e.0))
}

#[async_trait]
impl ConfigSource for ControlPlaneSource {
    fn describe(&self) -> String {
        format!("config pushed by {}", self.opts.url)
    }

    /// The running snapshot's document as the control plane sent it (its keys, not the deltas since).
    fn fetch(&self) -> Result<ConfigDocument, SourceError> {
        let r = lock(&self.running).clone();
        let config = load_document(&self.label(r.version), &r.document, &self.base_dir())?;
        Ok(ConfigDocument {
            config,
            version: r.version.to_string(),
            origin: self.origin(),
        })
    }

    /// Re-applies the running snapshot with the keys live now (deltas included).
    fn reload(&self, state: &ConfigState) -> Result<u64, ApplyError> {
        let fetched = self.fetch().map(|mut doc| {
            doc.config.keys = state.keys().keys();
            doc
        });
        state.apply_fetched(fetched)
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&*lock(&self.status)).ok()
    }

    async fn run(self: Arc<Self>, state: Arc<ConfigState>, shutdown: ShutdownWatch) {
        session::run(self, state, shutdown).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::reload::KeyDelta;
    use leaky_config::ApiKey;

    const DOC: &str = "server:\n  listen: 127.0.0.1:18080\n  admin_listen: 127.0.0.1:19090\n\
providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n    \
filters: [{ kind: api-key }]\ntiers:\n  pro: { priority: normal }\n";

    fn state() -> Arc<ConfigState> {
        let label = PathBuf::from("config pushed by test v1");
        let config = load_document(&label, DOC, Path::new(".")).unwrap();
        let doc = ConfigDocument {
            config,
            version: "1".into(),
            origin: Origin::Pushed {
                from: "test".into(),
            },
        };
        let boot = crate::bootstrap::Bootstrap::of(&doc.config.server);
        let background = crate::background::Background::start().unwrap();
        ConfigState::new(doc, boot, &background).unwrap()
    }

    fn key(id: &str, n: u8, tier: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            // Any 32 bytes stand for a digest here: only distinctness matters.
            sha256: [n; 32],
            user: "u".into(),
            org: None,
            tier: tier.into(),
            roles: vec![],
            models: vec![],
            expires_at: None,
        }
    }

    fn delta(upsert: Vec<ApiKey>, remove: &[&str], version: u64) -> KeyDelta {
        KeyDelta {
            upsert,
            remove: remove.iter().map(|s| s.to_string()).collect(),
            source_version: version.to_string(),
            label: PathBuf::from(format!("config pushed by test v{version}")),
        }
    }

    #[test]
    fn a_key_delta_swaps_the_index_without_a_new_snapshot() {
        let state = state();
        let before = state.snapshot();
        assert_eq!(
            state
                .apply_keys(delta(vec![key("a", 1, "pro"), key("b", 2, "pro")], &[], 2))
                .unwrap(),
            2
        );
        assert_eq!(state.apply_keys(delta(vec![], &["a"], 3)).unwrap(), 1);
        // The same snapshot (chains, JWKS caches) serves: only the key index moved.
        assert!(Arc::ptr_eq(&before, &state.snapshot()));
        let ids: Vec<String> = state.keys().keys().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["b"]);
        let status = state.status();
        assert_eq!(
            (status.last_result, status.source_version.as_str()),
            ("success", "3")
        );
    }

    #[test]
    fn a_delta_with_an_unknown_tier_is_refused_and_the_last_good_keys_serve() {
        let state = state();
        state
            .apply_keys(delta(vec![key("a", 1, "pro")], &[], 2))
            .unwrap();
        let e = state
            .apply_keys(delta(
                vec![key("b", 2, "pro"), key("c", 3, "gold")],
                &["a"],
                3,
            ))
            .unwrap_err();
        assert_eq!(
            e.messages(),
            ["config pushed by test v3: upsert[1].tier: key `c`: unknown tier `gold` (defined: pro)"]
        );
        let ids: Vec<String> = state.keys().keys().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["a"], "nothing of the refused delta applied");
        let status = state.status();
        assert_eq!(
            (status.last_result, status.source_version.as_str()),
            ("error", "2")
        );
    }
}
