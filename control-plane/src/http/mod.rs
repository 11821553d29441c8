//! The HTTP edge shared by every bounded context: RFC 9457 problem responses, the admin auth
//! extractor, strict JSON/query extractors, ETags and pagination. Knows no domain; each context maps its
//! own error enum to a [`Problem`] in one function.

mod auth;
mod extract;
mod problem;
pub mod versioning;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use crate::clock::{Clock, SystemClock};

pub use auth::{AdminToken, Principal, SCOPE_ADMIN};
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
    migrated: Arc<AtomicBool>,
}

impl ApiState {
    pub fn new(pool: PgPool, admin: AdminToken) -> Self {
        Self {
            pool,
            admin: Arc::new(admin),
            clock: Arc::new(SystemClock),
            migrated: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same state reading time from `clock` (tests move a manual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Marks the schema as migrated; the API answers 503 until then.
    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::Release);
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }
}
