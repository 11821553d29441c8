//! Tokens this filter has already verified, so a client reusing its access token (the normal case: a
//! token lives minutes and rides on every call) pays one signature verification, not one per request.
//! An ES256 verification costs ~240 µs of CPU with the RustCrypto backend; a hit costs a hash of the
//! token and a map lookup.
//!
//! What a hit still checks, every time: `exp`/`nbf` against the request's clock, the revoked set, and
//! that the JWKS has not changed since (its generation): any refresh — a rotated, added or removed
//! key — sends every token through full verification again, so a key taken out of the set stops
//! its tokens exactly as before. The key is the whole token, compared in full, so a token differing
//! in any byte (a tampered payload under a reused signature) is a miss. Only successes are kept; the
//! memory is bounded by bytes, and the cache belongs to one filter of one config version (a reload
//! starts empty, so changed issuers, audiences, claim names or tiers apply at once).

use crate::Principal;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of tokens (plus a fixed allowance per entry) one filter keeps.
const MAX_BYTES: u64 = 16 << 20;
/// Per-entry allowance for the principal and bookkeeping.
const ENTRY_OVERHEAD: u32 = 256;
/// An entry unused this long is dropped (tokens outlive it only if idle).
const IDLE: Duration = Duration::from_secs(15 * 60);

/// One verified token: what the checks on a hit need, and the principal it maps to.
pub(super) struct Verified {
    /// The JWKS generation the signature was verified under.
    pub(super) generation: u64,
    pub(super) exp: i64,
    pub(super) nbf: Option<i64>,
    pub(super) jti: Option<Box<str>>,
    pub(super) principal: Arc<Principal>,
}

pub(super) struct VerifiedTokens {
    cache: Cache<Box<str>, Arc<Verified>>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        let cache = Cache::builder()
            .max_capacity(MAX_BYTES)
            .weigher(weigh)
            .time_to_idle(IDLE)
            .build();
        VerifiedTokens { cache }
    }
}

/// An entry's weight: its token's bytes plus the allowance.
#[allow(clippy::borrowed_box)] // moka hands the weigher `&K`
fn weigh(token: &Box<str>, _: &Arc<Verified>) -> u32 {
    u32::try_from(token.len())
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

impl VerifiedTokens {
    pub(super) fn get(&self, token: &str) -> Option<Arc<Verified>> {
        self.cache.get(token)
    }

    pub(super) fn insert(&self, token: &str, verified: Verified) {
        self.cache.insert(token.into(), Arc::new(verified));
    }

    pub(super) fn forget(&self, token: &str) {
        self.cache.invalidate(token);
    }
}
