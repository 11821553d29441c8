//! The source's life after boot: the watch stream, event by event, reconnected with backoff when it
//! fails and at once when a key delta does not apply to the running version (the new stream starts
//! with a full snapshot). Every version received is answered: ACK when it serves, NACK with its errors
//! when the last good one keeps serving.

use super::backoff::Backoff;
use super::client::WatchStream;
use super::event::{api_keys, Event};
use super::registry::{self, Identity};
use super::{load_document, lock, ControlPlaneSource, Outcome, Refused};
use crate::document::ConfigDocument;
use crate::reload::{ApplyError, ConfigState, KeyDelta};
use leaky_config::KeySpec;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// How a stream ended.
enum End {
    Shutdown,
    /// Reconnect now, for a full snapshot.
    Resync(String),
    Failed(String),
}

/// Spawns the helpers (cache writer, registry), then answers the boot version.
async fn start(src: &Arc<ControlPlaneSource>, state: &ConfigState, shutdown: &ShutdownWatch) {
    if let Some(writer) = lock(&src.writer).take() {
        tokio::spawn(writer);
    }
    let me = Identity {
        address: state.bootstrap().listen.to_string(),
        started_at: src.started_at.clone(),
    };
    let version_of = src.clone();
    let version = Arc::new(move || Some(version_of.running_version()));
    tokio::spawn(registry::run(
        src.endpoint.clone(),
        me,
        version,
        shutdown.clone(),
    ));
    let boot = lock(&src.boot_report).take();
    if let Some((version, outcome)) = boot {
        if outcome.is_ok() {
            src.persist(state);
        }
        src.report(version, outcome).await;
    }
}

/// Runs until `shutdown`: `start`, then streams, reconnected after failures with backoff.
pub async fn run(
    src: Arc<ControlPlaneSource>,
    state: Arc<ConfigState>,
    mut shutdown: ShutdownWatch,
) {
    start(&src, &state, &shutdown).await;
    let mut backoff = Backoff::default();
    loop {
        let handed = lock(&src.handover).take();
        let stream = match handed {
            Some(s) => Ok(s),
            None => src.endpoint.watch().await.map_err(|e| e.to_string()),
        };
        let end = match stream {
            Ok(s) => {
                src.set_connected(true, None);
                src.session(&state, s, &mut backoff, &mut shutdown).await
            }
            Err(e) => End::Failed(e),
        };
        match end {
            End::Shutdown => return,
            End::Resync(why) => {
                tracing::info!(reason = %why, "reconnecting for a full snapshot");
                src.set_connected(false, Some(why));
            }
            End::Failed(why) => {
                tracing::warn!(url = %src.opts.url, error = %why, "control-plane stream down; the last good config keeps serving");
                src.set_connected(false, Some(why));
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}

impl ControlPlaneSource {
    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = lock(&self.status);
        s.connected = connected;
        if connected {
            s.connects += 1;
        }
        if error.is_some() {
            s.last_error = error;
        }
    }

    async fn session(
        &self,
        state: &Arc<ConfigState>,
        mut stream: WatchStream,
        backoff: &mut Backoff,
        shutdown: &mut ShutdownWatch,
    ) -> End {
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => return End::Shutdown,
                e = stream.next_event() => e,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => return End::Failed(e.to_string()),
            };
            if let Event::Snapshot { .. } = event {
                // A snapshot received is a working stream: the next failure starts the backoff over.
                backoff.reset();
            }
            if let Err(why) = self.handle(state, event).await {
                return End::Resync(why);
            }
        }
    }

    /// Applies one event and answers it; `Err`: the stream must be reopened.
    async fn handle(&self, state: &Arc<ConfigState>, event: Event) -> Result<(), String> {
        match event {
            Event::Snapshot {
                version,
                hash,
                document,
            } => {
                let outcome = self.snapshot(state, version, hash, document).await;
                self.report(version, outcome).await;
            }
            Event::Keys {
                version,
                base,
                hash,
                upsert,
                remove,
            } => {
                let running = self.running_version();
                if base != running {
                    return Err(format!(
                        "key delta v{version} applies to v{base}; this proxy runs v{running}"
                    ));
                }
                let outcome = self.delta(state, version, hash, &upsert, remove).await;
                self.report(version, outcome).await;
            }
            Event::Revoked { revision, tokens } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let kept = state
                    .revoked_tokens()
                    .replace(tokens.into_iter().map(|t| (t.jti, t.exp)), now);
                if let Some(m) = crate::metrics::metrics() {
                    m.jwt_revoked_tokens
                        .set(i64::try_from(kept).unwrap_or(i64::MAX));
                }
                tracing::info!(revision, revoked = kept, "revoked tokens updated");
            }
            Event::Heartbeat { version } => tracing::trace!(?version, "control-plane heartbeat"),
            Event::Unknown => tracing::debug!("unknown control-plane event ignored"),
        }
        Ok(())
    }

    /// A full snapshot: loaded and applied off the async workers (it resolves hosts, reads files).
    /// The version already running (a reconnect with nothing new) is acknowledged without a rebuild.
    async fn snapshot(
        &self,
        state: &Arc<ConfigState>,
        version: u64,
        hash: String,
        document: String,
    ) -> Outcome {
        let same = {
            let r = lock(&self.running);
            r.version == version && r.hash == hash
        };
        if same {
            return Ok(());
        }
        let (label, base, origin) = (self.label(version), self.base_dir(), self.origin());
        let text: Arc<str> = document.into();
        let (st, t) = (state.clone(), text.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let doc = load_document(&label, &t, &base).map(|config| ConfigDocument {
                config,
                version: version.to_string(),
                origin,
            });
            st.apply_fetched(doc)
        })
        .await
        .unwrap_or_else(|e| Err(ApplyError::Unavailable(format!("apply failed: {e}"))));
        match applied {
            Ok(local) => {
                tracing::info!(version, local, "control-plane snapshot applied");
                self.set_running(version, hash, text, "");
                self.persist(state);
                Ok(())
            }
            Err(e) => Err(e.messages()),
        }
    }

    /// A key delta on top of the running version: only the key index changes.
    async fn delta(
        &self,
        state: &Arc<ConfigState>,
        version: u64,
        hash: String,
        upsert: &[KeySpec],
        remove: Vec<String>,
    ) -> Outcome {
        let label = self.label(version);
        let upsert = api_keys(upsert).map_err(|errors| {
            let at = |e: String| format!("{}: {e}", label.display());
            errors.into_iter().map(at).collect::<Vec<_>>()
        })?;
        let delta = KeyDelta {
            upsert,
            remove,
            source_version: version.to_string(),
            label,
        };
        let st = state.clone();
        let applied = tokio::task::spawn_blocking(move || st.apply_keys(delta))
            .await
            .unwrap_or_else(|e| Err(ApplyError::Unavailable(format!("apply failed: {e}"))));
        match applied {
            Ok(_) => {
                let document = lock(&self.running).document.clone();
                self.set_running(version, hash, document, "");
                self.persist(state);
                Ok(())
            }
            Err(e) => Err(e.messages()),
        }
    }

    /// Records and sends the ACK or NACK of `version`; a failed send is logged (the control plane
    /// sees the version again in the registry heartbeat and on the next stream).
    async fn report(&self, version: u64, outcome: Outcome) {
        if let Err(errors) = &outcome {
            tracing::error!(version, errors = ?errors, "control-plane version refused (NACK); the last good config keeps serving");
            lock(&self.status).refused = Some(Refused {
                version,
                errors: errors.clone(),
            });
        }
        if let Err(e) = self.endpoint.ack(version, &outcome).await {
            tracing::warn!(version, error = %e, "ACK/NACK not delivered");
        }
    }
}
