//! Registration in the control plane's service registry: the proxy registers itself (role `proxy`, its
//! proxy listener, its build version, the config version it runs, when it started), then heartbeats
//! every [`EVERY`] with the config version it runs, and registers again when the registry has
//! forgotten it (`404`: expired, or the control plane's database was reset). Failures are logged and
//! retried on the next tick; nothing here is on the request path.

use super::client::Endpoint;
use pingora::server::ShutdownWatch;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Heartbeat interval (the registry marks an instance down after 30 s without one).
pub const EVERY: Duration = Duration::from_secs(10);

/// What this instance registers as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The proxy listener, `IP:PORT`.
    pub address: String,
    /// RFC 3339.
    pub started_at: String,
}

/// The registration body (the registry's `Registration`): role `proxy`, the proxy listener, the
/// build version, the config version running and the start time.
pub fn registration(me: &Identity, config_version: Option<u64>) -> serde_json::Value {
    json!({
        "role": "proxy",
        "address": me.address,
        "version": env!("CARGO_PKG_VERSION"),
        "config_version": config_version,
        "started_at": me.started_at,
    })
}

/// Registers, then heartbeats until `shutdown`; `version()` is the config version running now.
pub async fn run(
    endpoint: Endpoint,
    me: Identity,
    version: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    mut shutdown: ShutdownWatch,
) {
    let mut registered = false;
    loop {
        if registered {
            match endpoint.heartbeat(version()).await {
                Ok(404) => {
                    tracing::info!("the registry forgot this instance; registering again");
                    registered = false;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "registry heartbeat failed; retrying"),
            }
        } else {
            match endpoint.register(&registration(&me, version())).await {
                Ok(_) => {
                    tracing::info!(instance = %endpoint.instance, "registered with the control plane");
                    registered = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering with the control plane failed; retrying")
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
