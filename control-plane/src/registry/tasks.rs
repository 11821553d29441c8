//! The registry's background work: the expiry sweep (role `registry`) and the control plane's own
//! registration and heartbeats (every control-plane process), both in process through the registry's
//! Rust API, never over HTTP.
//!
//! Several replicas may sweep at once: the sweep is one `DELETE` of rows past expiry, and Postgres
//! re-checks the condition on rows another sweeper or a heartbeat touched meanwhile, so nothing is
//! deleted twice or while being renewed. Timers are tokio's (a paused-time test drives them); "now" is
//! the injected clock.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::time::MissedTickBehavior;

use super::{InstanceRole, Registration};
use crate::http::{ApiState, Problem, ProblemKind};

/// How often a `registry` process deletes expired instances. Listing hides them anyway; the sweep
/// keeps the table small and tells Eureka clients (through the revision) that something left.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often the control plane heartbeats its own registration (a third of the 30 s `down` limit).
pub const SELF_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// The audit actor of what the control plane does to its own registration.
pub const SELF_ACTOR: &str = "control-plane";

/// Deletes every instance whose last heartbeat is older than [`EXPIRE_AFTER`] at `now`; returns how
/// many. Safe to run from several replicas at once.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, Problem> {
    super::expire(pool, now).await
}

/// Sweeps every `every` (first at once), reading "now" from the state's clock; runs until aborted.
/// Skips its turn while migrations are pending; a failed sweep is logged and retried next turn.
pub async fn sweep_every(state: ApiState, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !state.is_migrated() {
            continue;
        }
        match sweep(&state.pool, state.clock.now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "registry sweep removed expired instances"),
            Err(e) => tracing::warn!(error = %e.detail, "registry sweep failed"),
        }
    }
}

/// How the control plane registers itself.
#[derive(Debug, Clone)]
pub struct SelfRegistration {
    /// `control-plane-<listen address>` (characters an id may not hold become `-`).
    pub id: String,
    pub registration: Registration,
}

impl SelfRegistration {
    /// The control plane listening on `listen`, this crate's version, started at `started_at`.
    pub fn new(listen: SocketAddr, started_at: DateTime<Utc>) -> Self {
        let address = advertised(listen, &host_name());
        let id: String = format!("control-plane-{address}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Self {
            id,
            registration: Registration {
                role: InstanceRole::ControlPlane,
                address,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                config_version: None,
                started_at: Some(started_at),
            },
        }
    }
}

/// The address others reach `listen` at: itself, or `host:port` when it listens on every interface
/// (`0.0.0.0` is nobody's address, and would give every replica the same id).
fn advertised(listen: SocketAddr, host: &str) -> String {
    if listen.ip().is_unspecified() {
        format!("{host}:{}", listen.port())
    } else {
        listen.to_string()
    }
}

/// This machine's host name (Linux), else `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Registers the control plane once migrations are done, then heartbeats every `every`; registers
/// again when a heartbeat finds the registration gone (expired, swept or cancelled). Runs until
/// aborted; Postgres being down only delays it.
pub async fn register_self(state: ApiState, me: SelfRegistration, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut registered = false;
    loop {
        ticks.tick().await;
        if !state.is_migrated() {
            // Until the schema exists, try again soon rather than a whole heartbeat later.
            ticks.reset_after(Duration::from_millis(200));
            continue;
        }
        let now = state.clock.now();
        if registered {
            match super::heartbeat(&state.pool, &me.id, None, now).await {
                Ok(()) => continue,
                Err(e) if e.kind == ProblemKind::NotFound => registered = false,
                Err(e) => {
                    tracing::warn!(error = %e.detail, "control-plane heartbeat failed");
                    continue;
                }
            }
        }
        match super::register(&state.pool, SELF_ACTOR, &me.id, &me.registration, now).await {
            Ok(_) => {
                tracing::info!(id = %me.id, "control plane registered itself");
                registered = true;
            }
            Err(e) => tracing::warn!(error = %e.detail, "control-plane self-registration failed"),
        }
    }
}

/// Cancels the control plane's own registration (on graceful shutdown); failures are only logged, a
/// missed cancel expires like any silent instance.
pub async fn deregister_self(pool: &PgPool, id: &str) {
    match super::cancel(pool, SELF_ACTOR, id).await {
        Ok(()) => tracing::info!(id, "control plane cancelled its registration"),
        Err(e) => tracing::warn!(error = %e.detail, "control-plane cancel failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn self_registration_advertises_a_reachable_address_and_a_valid_id() {
        let at = Utc::now();
        let me = SelfRegistration::new("127.0.0.1:9300".parse().unwrap(), at);
        assert_eq!(me.id, "control-plane-127.0.0.1:9300");
        assert_eq!(me.registration.address, "127.0.0.1:9300");
        let v6 = SelfRegistration::new("[::1]:9300".parse().unwrap(), at);
        assert_eq!(v6.id, "control-plane--::1-:9300");
        let any = advertised("0.0.0.0:9300".parse().unwrap(), "cp-a");
        assert_eq!(any, "cp-a:9300");
    }
}
