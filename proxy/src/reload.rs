//! The reload state: applies config documents (validate against the running bootstrap → build a
//! snapshot → one atomic store) whatever source they come from. It holds no file path and reads
//! nothing: sources (`source`, `watch`) produce documents, this applies them.
//!
//! A failed apply changes nothing that serves traffic: the last good snapshot stays, the error (with
//! `file:line:col`) is logged, counted in `leaky_config_reloads_total{result="error"}` and shown on
//! `/admin/config`. In-flight requests hold their own `Arc<Snapshot>` and finish on the version they
//! started with.
//!
//! A key delta (`apply_keys`, a control plane's `keys` event) is not a new version: the next key index
//! is built beside the live one and published with one pointer store; the snapshot, its filter chains
//! and the JWKS caches stay as they are.

use crate::background::Background;
use crate::bootstrap::Bootstrap;
use crate::document::{lines, ConfigDocument, Origin, SourceError};
use crate::limiter::LimiterBackend;
use crate::metrics::metrics;
use crate::snapshot::{Resolve, Shared, Snapshot};
use arc_swap::ArcSwap;
use leaky_config::{ApiKey, Config, ConfigError, LimitStore};
use leaky_filters::KeyIndex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// Why a document was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is not a valid config, or not one the running listeners may serve.
    #[error("{}", lines(.0))]
    Invalid(Vec<ConfigError>),
    /// The source had no document to offer.
    #[error("{0}")]
    Unavailable(String),
    /// What validation cannot see: unresolvable upstream hosts, unreadable JWKS files.
    #[error(transparent)]
    Build(#[from] crate::snapshot::BuildError),
}

impl From<SourceError> for ApplyError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Invalid(errors) => ApplyError::Invalid(errors),
            SourceError::Unavailable(why) => ApplyError::Unavailable(why),
        }
    }
}

impl ApplyError {
    /// One message per problem, as `/admin/config` and `/admin/reload` list them.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What `/admin/config` reports about reloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub loaded_at: String,
    pub last_attempt_at: String,
    pub last_result: &'static str,
    /// Every error of the last failed attempt, as `file:line:col: message`; empty after a success.
    pub last_errors: Vec<String>,
    /// Settings that changed in the source but need a restart to apply (listeners, threads, ...).
    pub pending_restart: Vec<String>,
    /// The source's version of the document serving now (content hash, pushed version).
    pub source_version: String,
    /// Where the document serving now came from.
    pub origin: Option<Origin>,
}

/// The serving config version and everything needed to apply the next one: one per process,
/// shared by the listeners (which read `snapshot()`) and the config source (which calls `apply`).
pub struct ConfigState {
    current: ArcSwap<Snapshot>,
    /// What the listeners were started with; documents cannot change it.
    bootstrap: Bootstrap,
    next_version: AtomicU64,
    /// One apply at a time, so versions are published in the order they were numbered.
    applying: Mutex<()>,
    /// Written only by applies and read only by the admin endpoint: never on the request path.
    status: Mutex<ReloadStatus>,
    /// Idle upstream connections, deployment/tenant state, the live key index and JWKS caches.
    shared: Shared,
    /// The limiter's store, kept across versions while `limits.store`/`limits.redis` are unchanged.
    backend: Mutex<Arc<LimiterBackend>>,
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The admin listener `bootstrap` binds may not be exposed by `config`'s token setting.
fn check_exposure(config: &Config, origin: &Origin) -> Result<(), ApplyError> {
    match config.server.admin_exposure_error() {
        None => Ok(()),
        Some(message) => Err(ApplyError::Invalid(vec![ConfigError {
            file: origin.label(),
            pos: None,
            message,
        }])),
    }
}

impl ConfigState {
    /// Applies the first document under `bootstrap` (the document's own, with command-line overrides);
    /// an error here stops the process with every problem listed. The limiter's and health checks' tasks
    /// run on `background`.
    pub fn new(
        mut doc: ConfigDocument,
        bootstrap: Bootstrap,
        background: &Background,
    ) -> Result<Arc<Self>, ApplyError> {
        bootstrap.pin(&mut doc.config.server);
        // Checked under the running bootstrap: `--admin-listen` may have moved the listener beyond loopback.
        check_exposure(&doc.config, &doc.origin)?;
        let shared = Shared::new(background.clone(), Resolve::System);
        let backend = Arc::new(LimiterBackend::new(&doc.config.limits.store, background));
        let snapshot = Snapshot::build(Arc::new(doc.config), 1, &shared, &backend)
            .map_err(ApplyError::Build)?;
        if let Some(m) = metrics() {
            m.config_version.set(1);
            m.config_last_reload_success.set(1);
        }
        let t = now();
        shared.keys.publish(snapshot.keys.clone());
        Ok(Arc::new(ConfigState {
            current: ArcSwap::from_pointee(snapshot),
            bootstrap,
            next_version: AtomicU64::new(2),
            applying: Mutex::new(()),
            status: Mutex::new(ReloadStatus {
                loaded_at: t.clone(),
                last_attempt_at: t,
                last_result: "success",
                source_version: doc.version,
                origin: Some(doc.origin),
                ..Default::default()
            }),
            shared,
            backend: Mutex::new(backend),
        }))
    }

    /// The snapshot for one request: one atomic load and a reference-count increment.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// What the listeners run with.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The backend for `settings`: the current one when they did not change (buckets survive).
    fn backend_for(&self, settings: &LimitStore) -> Arc<LimiterBackend> {
        let mut b = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        if b.settings != *settings {
            tracing::info!("limits.store changed: starting a new limiter store");
            *b = Arc::new(LimiterBackend::new(settings, &self.shared.background));
        }
        b.clone()
    }

    /// Applies what a source fetched: a document, or the reason it has none (recorded as a failure).
    pub fn apply_fetched(
        &self,
        fetched: Result<ConfigDocument, SourceError>,
    ) -> Result<u64, ApplyError> {
        match fetched {
            Ok(doc) => self.apply(doc),
            Err(e) => {
                let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
                self.record(Err(e.into()))
            }
        }
    }

    /// Applies `doc`. On success its snapshot serves every request that starts afterwards and the
    /// new version is returned; on failure the last good one keeps serving.
    pub fn apply(&self, doc: ConfigDocument) -> Result<u64, ApplyError> {
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let prepared = self.prepare(doc);
        self.record(prepared)
    }

    /// Everything fallible: bootstrap check, limiter store, snapshot build.
    fn prepare(&self, mut doc: ConfigDocument) -> Result<Prepared, ApplyError> {
        // Listeners and threads are bound at start; keep the running values, report the change.
        let pending = self
            .bootstrap
            .changes_to(&Bootstrap::of(&doc.config.server));
        self.bootstrap.pin(&mut doc.config.server);
        // The running listener decides whether the new config may drop the token.
        check_exposure(&doc.config, &doc.origin)?;
        let backend = self.backend_for(&doc.config.limits.store);
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let snapshot = Snapshot::build(Arc::new(doc.config), version, &self.shared, &backend)
            .map_err(ApplyError::Build)?;
        Ok(Prepared {
            snapshot,
            pending,
            source_version: doc.version,
            origin: doc.origin,
        })
    }

    /// Records the outcome (status, metrics, log) and, on success, publishes the snapshot.
    fn record(&self, result: Result<Prepared, ApplyError>) -> Result<u64, ApplyError> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = now();
        let m = metrics();
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                let errors = e.messages();
                for e in &errors {
                    tracing::error!(error = %e, "config reload failed; the previous config keeps serving");
                }
                status.last_result = "error";
                status.last_errors = errors;
                if let Some(m) = m {
                    m.reloads.with_label_values(&["error"]).inc();
                    m.config_last_reload_success.set(0);
                }
                return Err(e);
            }
        };
        let version = p.snapshot.version;
        let hash = p.snapshot.config.hash.clone();
        // Count and record first, publish last: whoever sees the new version (on /admin/config or in
        // a response) also sees it in /metrics and the reload status.
        if let Some(m) = m {
            m.reloads.with_label_values(&["success"]).inc();
            m.config_version.set(version as i64);
            m.config_last_reload_success.set(1);
        }
        status.loaded_at = status.last_attempt_at.clone();
        status.last_result = "success";
        status.last_errors.clear();
        status.pending_restart = p.pending;
        status.source_version = p.source_version;
        status.origin = Some(p.origin);
        // Keys first: the instant between the two stores, a request on the old version already sees
        // the new keys (never a request on the new version with the old keys).
        self.shared.keys.publish(p.snapshot.keys.clone());
        self.current.store(Arc::new(p.snapshot));
        tracing::info!(version, hash = %hash, "config reloaded");
        Ok(version)
    }
}

/// Key changes on top of the live key index, already parsed (`control_plane::event`).
#[derive(Debug, Clone)]
pub struct KeyDelta {
    /// Entries replacing the one with the same id, or added.
    pub upsert: Vec<ApiKey>,
    /// Ids dropped (unknown ids are ignored).
    pub remove: Vec<String>,
    /// The source's version after the delta (`/admin/config`'s `reload.source_version`).
    pub source_version: String,
    /// What problems are reported against (`config pushed by URL v43`).
    pub label: std::path::PathBuf,
}

impl ConfigState {
    /// The revoked token ids every `jwt` filter refuses (the control plane's `revoked` pushes land here).
    pub fn revoked_tokens(&self) -> &Arc<leaky_filters::RevokedTokens> {
        self.shared.jwks.revoked()
    }

    /// The key index the `api-key` filters read now (after the last snapshot and every delta since).
    pub fn keys(&self) -> Arc<KeyIndex> {
        Arc::clone(&self.shared.keys.load())
    }

    /// Applies a key delta: every upserted key's tier must be one the serving config defines and no
    /// secret may belong to two ids; then the next index is published. On failure the live index
    /// keeps serving and the error is recorded as a failed reload. Returns the number of keys now live.
    pub fn apply_keys(&self, delta: KeyDelta) -> Result<usize, ApplyError> {
        let _one = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.delta_index(&delta);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = now();
        match next {
            Ok(next) => {
                let live = next.len();
                status.loaded_at = status.last_attempt_at.clone();
                status.last_result = "success";
                status.last_errors.clear();
                status.source_version = delta.source_version;
                self.shared.keys.publish(Arc::new(next));
                tracing::info!(
                    upserted = delta.upsert.len(),
                    removed = delta.remove.len(),
                    live,
                    "key delta applied"
                );
                Ok(live)
            }
            Err(e) => {
                status.last_result = "error";
                status.last_errors = e.messages();
                tracing::error!(error = %e, "key delta refused; the previous keys keep serving");
                Err(e)
            }
        }
    }

    /// The index `delta` makes of the live one, checked against the serving config's tiers.
    fn delta_index(&self, delta: &KeyDelta) -> Result<KeyIndex, ApplyError> {
        let snapshot = self.snapshot();
        let tiers = &snapshot.config.tiers;
        let at = |message: String| ConfigError {
            file: delta.label.clone(),
            pos: None,
            message,
        };
        let unknown: Vec<ConfigError> = (delta.upsert.iter().enumerate())
            .filter(|(_, k)| !tiers.contains_key(&k.tier))
            .map(|(i, k)| {
                let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
                at(format!(
                    "upsert[{i}].tier: key `{}`: unknown tier `{}` (defined: {})",
                    k.id,
                    k.tier,
                    known.join(", ")
                ))
            })
            .collect();
        if !unknown.is_empty() {
            return Err(ApplyError::Invalid(unknown));
        }
        self.keys()
            .with_delta(&delta.upsert, &delta.remove)
            .map_err(|e| ApplyError::Invalid(vec![at(e.to_string())]))
    }
}

/// A built, not yet published version.
struct Prepared {
    snapshot: Snapshot,
    pending: Vec<String>,
    source_version: String,
    origin: Origin,
}
