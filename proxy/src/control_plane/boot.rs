//! The first document of a proxy fed by a control plane. The control plane's first `snapshot` is
//! waited for at most [`BOOT_WAIT`] (retrying with backoff meanwhile: a control plane started at the
//! same moment is not yet listening); when it does not come, or cannot be loaded (NACKed once `run`
//! starts), the last-good cache is used, and the log says which. Neither: start-up fails naming both.

use super::backoff::Backoff;
use super::cache::{self, LastGood};
use super::client::{Endpoint, WatchStream};
use super::event::{api_keys, Event};
use super::{load_document, ControlPlaneOptions, ControlPlaneSource, Running, WatchStatus};
use crate::background::Background;
use crate::document::{ConfigDocument, Origin};
use crate::reload::ApplyError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

/// How long a starting proxy waits for its control plane's first snapshot.
pub const BOOT_WAIT: Duration = Duration::from_secs(5);

/// Why a proxy fed by a control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no config to start from: control plane {url}: {control_plane}; last-good cache {}: {cache}", .path.display())]
    Neither {
        url: String,
        control_plane: String,
        path: PathBuf,
        cache: String,
    },
    #[error("control plane client: {0}")]
    Client(String),
}

/// A first snapshot received: the stream it came on, its version, hash and text.
type First = (WatchStream, u64, String, String);

/// Reads the first snapshot within `BOOT_WAIT`, reconnecting with backoff.
async fn first_snapshot(endpoint: Endpoint) -> Result<First, String> {
    let mut backoff = Backoff::default();
    let mut last = String::from("no answer");
    let attempts = async {
        loop {
            match endpoint.watch().await {
                Ok(mut s) => loop {
                    match s.next_event().await {
                        Ok(Event::Snapshot {
                            version,
                            hash,
                            document,
                        }) => return (s, version, hash, document),
                        Ok(_) => continue,
                        Err(e) => {
                            last = e.to_string();
                            break;
                        }
                    }
                },
                Err(e) => last = e.to_string(),
            }
            backoff.wait().await;
        }
    };
    match tokio::time::timeout(BOOT_WAIT, attempts).await {
        Ok(first) => Ok(first),
        Err(_) => Err(format!("no snapshot within {BOOT_WAIT:?} ({last})")),
    }
}

/// The first document and the source that continues from it. Blocks (at most `BOOT_WAIT` and a
/// margin) while the background runtime talks to the control plane.
pub fn boot(
    opts: ControlPlaneOptions,
    background: &Background,
) -> Result<(ConfigDocument, Arc<ControlPlaneSource>), BootError> {
    let endpoint = Endpoint::new(&opts.url, &opts.token, &opts.instance, &opts.tls)
        .map_err(BootError::Client)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ep = endpoint.clone();
    // On the background runtime: the stream's connection lives there for the life of the process.
    background.spawn(async move {
        let _ = tx.send(first_snapshot(ep).await);
    });
    let first = rx
        .recv_timeout(BOOT_WAIT + Duration::from_secs(2))
        .unwrap_or_else(|_| Err("the boot task did not answer".into()));
    let source = Arc::new(new_source(opts, endpoint));
    let control_plane = match first {
        Ok((stream, version, hash, document)) => {
            *super::lock(&source.handover) = Some(stream);
            match load_document(&source.label(version), &document, &source.base_dir()) {
                Ok(config) => {
                    tracing::info!(url = %source.opts.url, version, "starting from the control plane's snapshot");
                    source.set_running(version, hash, document.into(), "control_plane");
                    *super::lock(&source.boot_report) = Some((version, Ok(())));
                    return Ok((source.document(config, version), source));
                }
                Err(e) => {
                    let errors = ApplyError::from(e).messages();
                    *super::lock(&source.boot_report) = Some((version, Err(errors.clone())));
                    format!("its snapshot v{version} is invalid: {}", errors.join("; "))
                }
            }
        }
        Err(e) => e,
    };
    match from_cache(&source) {
        Ok((config, last)) => {
            tracing::warn!(
                url = %source.opts.url, reason = %control_plane, cache = %source.opts.cache.display(),
                version = last.version, "control plane unavailable: starting from the last-good snapshot"
            );
            let version = last.version;
            source.set_running(version, last.hash, last.document.into(), "cache");
            Ok((source.document(config, version), source))
        }
        Err(cache) => Err(BootError::Neither {
            url: source.opts.url.clone(),
            control_plane,
            path: source.opts.cache.clone(),
            cache,
        }),
    }
}

/// The cached document with its cached keys (the deltas applied after it) in place of its own.
fn from_cache(source: &ControlPlaneSource) -> Result<(leaky_config::Config, LastGood), String> {
    let last = cache::read(&source.opts.cache)?;
    let mut config = load_document(
        &source.label(last.version),
        &last.document,
        &source.base_dir(),
    )
    .map_err(|e| e.to_string())?;
    config.keys = api_keys(&last.keys).map_err(|e| e.join("; "))?;
    if let Some(k) = config
        .keys
        .iter()
        .find(|k| !config.tiers.contains_key(&k.tier))
    {
        return Err(format!("key `{}`: unknown tier `{}`", k.id, k.tier));
    }
    Ok((config, last))
}

fn new_source(opts: ControlPlaneOptions, endpoint: Endpoint) -> ControlPlaneSource {
    let (persister, writer) = cache::Persister::new(opts.cache.clone());
    let started_at = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    ControlPlaneSource {
        status: Mutex::new(WatchStatus {
            url: opts.url.clone(),
            instance: opts.instance.clone(),
            connected: false,
            version: None,
            hash: None,
            booted_from: "",
            connects: 0,
            last_error: None,
            refused: None,
        }),
        endpoint,
        running: Mutex::new(Running {
            version: 0,
            hash: String::new(),
            document: "".into(),
        }),
        handover: Mutex::new(None),
        boot_report: Mutex::new(None),
        persister,
        writer: Mutex::new(Some(Box::pin(writer))),
        started_at,
        opts,
    }
}

impl ControlPlaneSource {
    pub(super) fn set_running(
        &self,
        version: u64,
        hash: String,
        document: Arc<str>,
        from: &'static str,
    ) {
        let mut s = super::lock(&self.status);
        s.version = Some(version);
        s.hash = Some(hash.clone());
        if !from.is_empty() {
            s.booted_from = from;
        }
        *super::lock(&self.running) = Running {
            version,
            hash,
            document,
        };
    }

    fn document(&self, config: leaky_config::Config, version: u64) -> ConfigDocument {
        ConfigDocument {
            config,
            version: version.to_string(),
            origin: Origin::Pushed {
                from: self.opts.url.clone(),
            },
        }
    }
}
