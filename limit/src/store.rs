//! Where bucket state lives: the `Store` trait, the request's charges, and the outcome.
//!
//! One `take` call covers every bucket of a request, all or nothing: either every charge is admitted
//! and stored, or none is and the first refusal is reported. `adjust` settles (charges more or gives
//! back) after the upstream answered. Backends: `MemoryStore` (embedded default) and `RedisStore`
//! (shared by replicas), wrapped in `Guarded` for Redis outages.

use super::algo::{Admit, Algorithm, Deny, Nanos, ReservePermille};
use async_trait::async_trait;
use std::sync::Arc;

/// What a policy does when its store cannot answer (Redis down, timed out, breaker open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnStoreError {
    /// Admit without limiting.
    FailOpen,
    /// Refuse (503 in the route's dialect).
    FailClosed,
    /// Limit in-process, with this proxy's share of the limit.
    #[default]
    Local,
}

/// One bucket's part in a request.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Store key, unique per (policy version, dimension values), e.g. `free-rpm:7f3a…:k=demo-free`.
    pub key: Arc<str>,
    pub algo: Arc<Algorithm>,
    pub cost: u64,
    pub reserve: ReservePermille,
    pub on_error: OnStoreError,
}

/// A settlement for one bucket.
#[derive(Debug, Clone)]
pub struct Adjust {
    pub key: Arc<str>,
    pub algo: Arc<Algorithm>,
    pub delta: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Every charge admitted; one `Admit` per charge, in order.
    Admitted(Vec<Admit>),
    /// Nothing was taken; `index` is the first charge refused.
    Denied { index: usize, deny: Deny },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("limiter store timed out")]
    Timeout,
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
    #[error("limiter store answered garbage: {0}")]
    Protocol(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Backend name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;
    /// `now` is the caller's clock; a shared backend may use its own (Redis `TIME`) so replicas agree.
    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError>;
    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError>;
}
