//! A deployment's own requests/tokens-per-minute budget, used as a **headroom heuristic** when choosing
//! a deployment ("is there room for this request on this key this minute?"). It is not a rate limiter:
//! the exact per-tenant limits live in `leaky-limit`. Windows are fixed calendar minutes on the caller's
//! clock (`minute = now_ms / 60_000`), counted with atomics; the check and the charge are separate
//! steps, so concurrent requests may overshoot a limit by the number racing at the boundary.
//!
//! Each counter is one `AtomicU64` packing the minute (24 bits, modulo 2^24 — 31 years) and the count
//! (40 bits, saturating), so a minute rolls over with a single CAS and no increment is lost to it.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 40;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;
const MINUTE_MS: u64 = 60_000;

/// Requests and tokens charged to one deployment in the current minute, against its optional limits.
pub struct DeploymentQuota {
    rpm: Option<u64>,
    tpm: Option<u64>,
    requests: MinuteCounter,
    tokens: MinuteCounter,
}

impl DeploymentQuota {
    /// `None`: no limit of that kind.
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Self {
            rpm,
            tpm,
            requests: MinuteCounter::default(),
            tokens: MinuteCounter::default(),
        }
    }

    pub fn rpm(&self) -> Option<u64> {
        self.rpm
    }

    pub fn tpm(&self) -> Option<u64> {
        self.tpm
    }

    /// Whether one more request with `tokens` more tokens fits in the current minute. A request larger
    /// than `tpm` on its own never fits.
    pub fn has_headroom(&self, now_ms: u64, tokens: u64) -> bool {
        let m = now_ms / MINUTE_MS;
        let rpm_ok = self
            .rpm
            .is_none_or(|l| self.requests.get(m).saturating_add(1) <= l);
        rpm_ok
            && self
                .tpm
                .is_none_or(|l| self.tokens.get(m).saturating_add(tokens) <= l)
    }

    /// Counts one request with `tokens` (reserved) tokens in the current minute.
    pub fn charge(&self, now_ms: u64, tokens: u64) {
        let m = now_ms / MINUTE_MS;
        self.requests.update(m, |c| c.saturating_add(1));
        self.tokens.update(m, |c| c.saturating_add(tokens));
    }

    /// Replaces a charge of `charged` tokens by the `actual` count, in the current minute's tokens
    /// (never below 0; a refund for a charge made in an earlier minute is dropped).
    pub fn settle(&self, now_ms: u64, charged: u64, actual: u64) {
        let m = now_ms / MINUTE_MS;
        if actual >= charged {
            self.tokens
                .update(m, |c| c.saturating_add(actual - charged));
        } else {
            self.tokens
                .update_current(m, |c| c.saturating_sub(charged - actual));
        }
    }

    /// `(requests, tokens)` counted in the current minute.
    pub fn used(&self, now_ms: u64) -> (u64, u64) {
        let m = now_ms / MINUTE_MS;
        (self.requests.get(m), self.tokens.get(m))
    }
}

/// A count tagged with the minute it belongs to.
#[derive(Default)]
struct MinuteCounter(AtomicU64);

impl MinuteCounter {
    fn split(w: u64) -> (u64, u64) {
        (w >> COUNT_BITS, w & COUNT_MAX)
    }

    fn get(&self, minute: u64) -> u64 {
        let (tag, count) = Self::split(self.0.load(Ordering::Acquire));
        if tag == minute & TAG_MASK {
            count
        } else {
            0
        }
    }

    /// Applies `f` to the count of `minute` (a count of another minute is first replaced by 0).
    fn update(&self, minute: u64, f: impl Fn(u64) -> u64) {
        let tag = minute & TAG_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (t, c) = Self::split(w);
                let base = if t == tag { c } else { 0 };
                Some((tag << COUNT_BITS) | f(base).min(COUNT_MAX))
            });
    }

    /// Applies `f` only if the counter holds `minute`.
    fn update_current(&self, minute: u64, f: impl Fn(u64) -> u64) {
        let tag = minute & TAG_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (t, c) = Self::split(w);
                (t == tag).then(|| (tag << COUNT_BITS) | f(c).min(COUNT_MAX))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_charge_settle_and_roll() {
        let q = DeploymentQuota::new(Some(2), Some(100));
        assert!(q.has_headroom(0, 100));
        assert!(!q.has_headroom(0, 101));
        q.charge(0, 60);
        assert!(q.has_headroom(1, 40));
        assert!(!q.has_headroom(1, 41));
        q.settle(2, 60, 10);
        assert_eq!(q.used(2), (1, 10));
        q.settle(2, 50, 0); // never below 0
        assert_eq!(q.used(2), (1, 0));
        q.charge(3, 0);
        assert!(!q.has_headroom(4, 0)); // rpm used
        assert!(q.has_headroom(60_000, 100)); // next minute
        assert_eq!(q.used(60_000), (0, 0));
        q.settle(60_001, 10, 0); // refund of last minute's charge: dropped
        q.settle(60_001, 0, 7); // overrun lands now
        assert_eq!(q.used(60_002), (0, 7));
    }

    #[test]
    fn unlimited() {
        let q = DeploymentQuota::new(None, None);
        q.charge(0, u64::MAX);
        assert!(q.has_headroom(0, u64::MAX));
        assert_eq!(q.used(0), (1, COUNT_MAX));
    }
}
