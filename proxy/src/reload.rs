//! Hot reload: parse → validate → build a snapshot → one atomic store.
//!
//! A failed reload changes nothing that serves traffic: the last good snapshot stays, the error (with
//! `file:line:col`) is logged, counted in `leaky_config_reloads_total{result="error"}` and shown on
//! `/admin/config`. In-flight requests hold their own `Arc<Snapshot>` and finish on the version they
//! started with.

use crate::background::Background;
use crate::limiter::LimiterBackend;
use crate::metrics::metrics;
use crate::snapshot::{Resolve, Shared, Snapshot};
use arc_swap::ArcSwap;
use leaky_config::{Config, LimitStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// What `/admin/config` reports about reloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub loaded_at: String,
    pub last_attempt_at: String,
    pub last_result: &'static str,
    /// Every error of the last failed attempt, as `file:line:col: message`; empty after a success.
    pub last_errors: Vec<String>,
    /// Settings that changed on disk but need a restart to apply (listeners, threads).
    pub pending_restart: Vec<String>,
}

pub struct ConfigState {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    next_version: AtomicU64,
    /// Written only by reloads and read only by the admin endpoint: never on the request path.
    status: Mutex<ReloadStatus>,
    /// Idle upstream connections and deployment/tenant state, kept across versions.
    shared: Shared,
    /// The limiter's store, kept across versions while `limits.store`/`limits.redis` are unchanged.
    backend: Mutex<Arc<LimiterBackend>>,
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ConfigState {
    /// Loads the first config; an error here stops the process with every problem listed. The
    /// limiter's and health checks' tasks run on `background`.
    pub fn load(
        path: &Path,
        background: &Background,
        apply: impl Fn(&mut Config),
    ) -> Result<Arc<Self>, String> {
        let mut config = leaky_config::load(path).map_err(|e| e.to_string())?;
        apply(&mut config);
        // Again after `apply`: `--admin-listen` may have moved the listener beyond loopback.
        if let Some(e) = config.server.admin_exposure_error() {
            return Err(format!("{}: {e}", path.display()));
        }
        let shared = Shared::new(background.clone(), Resolve::System);
        let backend = Arc::new(LimiterBackend::new(&config.limits.store, background));
        let snapshot = Snapshot::build(Arc::new(config), 1, &shared, &backend)?;
        if let Some(m) = metrics() {
            m.config_version.set(1);
            m.config_last_reload_success.set(1);
        }
        let t = now();
        Ok(Arc::new(ConfigState {
            current: ArcSwap::from_pointee(snapshot),
            path: path.to_path_buf(),
            next_version: AtomicU64::new(2),
            status: Mutex::new(ReloadStatus {
                loaded_at: t.clone(),
                last_attempt_at: t,
                last_result: "success",
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Files the active config was read from (the watcher reloads when any of them changes).
    pub fn files(&self) -> Vec<PathBuf> {
        self.current.load().config.files.clone()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The backend for `settings`: the current one when they did not change (buckets survive).
    fn backend_for(&self, settings: &LimitStore) -> Result<Arc<LimiterBackend>, String> {
        let mut b = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        if b.settings != *settings {
            tracing::info!("limits.store changed: starting a new limiter store");
            *b = Arc::new(LimiterBackend::new(settings, &self.shared.background));
        }
        Ok(b.clone())
    }

    /// Re-reads the config. On success the new snapshot serves every request that starts afterwards.
    pub fn reload(&self) -> Result<u64, Vec<String>> {
        let old = self.snapshot();
        let result = leaky_config::load(&self.path)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
            .and_then(|mut c| {
                // Listeners and threads are bound at start; keep the running values, report the change.
                let pending = restart_only_changes(&old.config, &c);
                c.server.listen = old.config.server.listen;
                c.server.admin_listen = old.config.server.admin_listen;
                c.server.threads = old.config.server.threads;
                // The running listener decides whether the new config may drop the token.
                if let Some(e) = c.server.admin_exposure_error() {
                    return Err(vec![format!("{}: {e}", self.path.display())]);
                }
                let backend = self.backend_for(&c.limits.store).map_err(|e| vec![e])?;
                let version = self.next_version.fetch_add(1, Ordering::Relaxed);
                Snapshot::build(Arc::new(c), version, &self.shared, &backend)
                    .map(|s| (s, pending))
                    .map_err(|e| vec![e])
            });
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = now();
        let m = metrics();
        match result {
            Ok((snapshot, pending)) => {
                let version = snapshot.version;
                let hash = snapshot.config.hash.clone();
                // Count and record first, publish last: whoever sees the new version (on /admin/config
                // or in a response) also sees it in /metrics and the reload status.
                if let Some(m) = m {
                    m.reloads.with_label_values(&["success"]).inc();
                    m.config_version.set(version as i64);
                    m.config_last_reload_success.set(1);
                }
                status.loaded_at = status.last_attempt_at.clone();
                status.last_result = "success";
                status.last_errors.clear();
                status.pending_restart = pending;
                self.current.store(Arc::new(snapshot));
                tracing::info!(version, hash = %hash, "config reloaded");
                Ok(version)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "config reload failed; the previous config keeps serving");
                }
                status.last_result = "error";
                status.last_errors = errors.clone();
                if let Some(m) = m {
                    m.reloads.with_label_values(&["error"]).inc();
                    m.config_last_reload_success.set(0);
                }
                Err(errors)
            }
        }
    }
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push(format!(
            "server.listen: {} → {} (restart to apply)",
            old.server.listen, new.server.listen
        ));
    }
    if old.server.admin_listen != new.server.admin_listen {
        out.push(format!(
            "server.admin_listen: {} → {} (restart to apply)",
            old.server.admin_listen, new.server.admin_listen
        ));
    }
    if old.server.threads != new.server.threads {
        out.push(format!(
            "server.threads: {} → {} (restart to apply)",
            old.server.threads, new.server.threads
        ));
    }
    out
}
