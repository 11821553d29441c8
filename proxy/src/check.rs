//! `check-config`'s second half: the snapshot built from a validated config exactly as start-up
//! builds it — filter chains (JWKS files read), upstream addresses resolved, the limiter compiled —
//! so what validation cannot see (a missing JWKS file, an unresolvable upstream) fails the check
//! rather than the start-up.
//!
//! Nothing here touches the network beyond name resolution: the limiter is compiled against an
//! in-process store whatever `limits.store` says (Redis is reached only by a running proxy, which
//! starts and serves while Redis is down), the response cache's Redis stores never connect, JWKS URLs are fetched only on a request, and health-check
//! tasks stop with the throwaway background runtime before their first probe.

use crate::background::{Background, BackgroundError};
use crate::limiter::LimiterBackend;
use crate::snapshot::{Resolve, Shared, Snapshot};
use leaky_config::{Config, LimitStore};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Background(#[from] BackgroundError),
    /// What `Snapshot::build` reported (the start-up would have stopped with the same message).
    #[error(transparent)]
    Build(#[from] crate::snapshot::BuildError),
}

/// Builds the snapshot of `config` as start-up does, then drops it. `resolve` is
/// [`Resolve::Skip`] for `--offline`.
pub fn check_snapshot(config: Config, resolve: Resolve) -> Result<(), CheckError> {
    let background = Background::start()?;
    let mut shared = Shared::new(background.clone(), resolve);
    shared.caches = Arc::new(crate::response_cache::Stores::offline());
    let backend = Arc::new(LimiterBackend::new(&LimitStore::Memory, &background));
    let built = Snapshot::build(Arc::new(config), 1, &shared, &backend).map(drop);
    background.shutdown();
    built.map_err(CheckError::Build)
}
