//! The HTTP edge shared by every bounded context: RFC 9457 problem responses, the admin auth
//! extractor, strict JSON/query extractors, ETags and pagination. Knows no domain; each context maps its
//! own error enum to a [`Problem`] in one function.

mod auth;
mod extract;
mod problem;
pub mod versioning;

use std::sync::Arc;

use sqlx::PgPool;

use crate::clock::{Clock, SystemClock};

pub use auth::{bearer, missing_bearer, AdminToken, Principal, ROLE_PLATFORM_ADMIN, SCOPE_ADMIN};
pub use extract::{
    etag, if_match, parse_id, ApiJson, ApiQuery, MaybeJson, Page, PageQuery, MAX_PAGE,
};
pub use problem::{FieldError, Problem, ProblemDetails, ProblemKind};

/// Largest request body the admin API reads; a bigger one is refused with 413 before it is parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach: the pool, the admin credential, the clock, and whether migrations
/// are done.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub admin: Arc<AdminToken>,
    /// "Now" for time-dependent rules; the system clock unless [`ApiState::with_clock`] replaced it.
    pub clock: Arc<dyn Clock>,
    /// `true` once migrations are done; [`ApiState::migrated`] waits on it.
    migrated: Arc<tokio::sync::watch::Sender<bool>>,
    /// Set when the process starts a graceful shutdown: long-lived responses (watch streams) end, so
    /// the server's drain does not wait for them forever.
    draining: Arc<tokio::sync::watch::Sender<bool>>,
    /// What the process's background work counts; `/metrics` reads it.
    pub stats: Arc<crate::metrics::Stats>,
    /// Wakes this process's saga worker at once when a request made a saga due (billing).
    pub saga_wake: Arc<tokio::sync::Notify>,
}

impl ApiState {
    pub fn new(pool: PgPool, admin: AdminToken) -> Self {
        Self {
            pool,
            admin: Arc::new(admin),
            clock: Arc::new(SystemClock),
            migrated: Arc::new(tokio::sync::watch::Sender::new(false)),
            draining: Arc::new(tokio::sync::watch::Sender::new(false)),
            stats: Arc::default(),
            saga_wake: Arc::default(),
        }
    }

    /// The same state reading time from `clock` (tests move a manual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Marks the schema as migrated; the API answers 503 until then.
    pub fn set_migrated(&self) {
        self.migrated.send_replace(true);
    }

    pub fn is_migrated(&self) -> bool {
        *self.migrated.borrow()
    }

    /// Resolves once the schema is migrated (at once if it is): what background work waits on.
    pub fn migrated(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.migrated.subscribe();
        async move {
            let _ = rx.wait_for(|m| *m).await;
        }
    }

    /// Starts the drain: every long-lived response ends.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once the drain started (at once if it already has).
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}
