//! Retry budget (as in Finagle and Envoy): retries are allowed as a share of recent original requests,
//! plus a small floor so that a quiet route can still retry.
//!
//! The window is `W = ceil(window_ms / 1000)` one-second buckets: at `now_ms` it covers the current
//! second and the `W − 1` before it. A retry is granted iff, in that window,
//!
//! ```text
//! retries < floor(ratio × requests) + min_per_sec × W
//! ```
//!
//! and the granted retry is counted at once. **Guarantee:** right after every grant, the retries
//! counted in the window (this one included) are ≤ `floor(ratio × requests) + min_per_sec × W` for
//! the requests counted in that same window — no "+1 at the boundary". Grants are serialized by a
//! short lock, so this holds under concurrency too; `on_request` is lock-free (one CAS on a packed
//! bucket) and only ever loosens the budget. As the window moves on, its requests and retries both
//! leave it: after `W` seconds with no traffic the budget is back to `min_per_sec × W`.
//!
//! Counters saturate at about a million per second (see `window.rs`); a saturated request count only
//! makes the budget stricter, and a saturated retry count refuses retries.

use super::window::Ring;
use parking_lot::Mutex;

/// Retry budget of one route (or any other scope); cheap to share behind an `Arc`.
pub struct RetryBudget {
    ratio: f64,
    floor: u64,
    ring: Ring,
    grant: Mutex<()>,
}

impl RetryBudget {
    /// `ratio`: retries allowed per original request (e.g. 0.2); negative or NaN counts as 0.
    /// `min_per_sec`: retries always allowed per second of window. `window_ms` is rounded up to whole
    /// seconds, clamped to 1..=3600.
    pub fn new(ratio: f64, min_per_sec: u32, window_ms: u64) -> Self {
        let secs = window_ms.div_ceil(1000).clamp(1, 3600);
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        Self {
            ratio,
            floor: u64::from(min_per_sec) * secs,
            ring: Ring::new(secs as usize),
            grant: Mutex::new(()),
        }
    }

    /// The window length in seconds (`W`).
    pub fn window_secs(&self) -> u64 {
        self.ring.len()
    }

    /// Counts an original (non-retry) request. Lock-free.
    pub fn on_request(&self, now_ms: u64) {
        self.ring.add(now_ms / 1000, 1, 0);
    }

    /// Grants a retry (and counts it) iff the window's retries are below its allowance.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let sec = now_ms / 1000;
        let _serial = self.grant.lock();
        let (requests, retries) = self.ring.sum(sec);
        if retries >= self.allowance(requests) {
            return false;
        }
        self.ring.add(sec, 0, 1)
    }

    /// `(requests, retries)` counted in the window at `now_ms`.
    pub fn window_counts(&self, now_ms: u64) -> (u64, u64) {
        self.ring.sum(now_ms / 1000)
    }

    /// Retries allowed in a window holding `requests` original requests.
    pub fn allowance(&self, requests: u64) -> u64 {
        // f64 → u64 `as` saturates and floors; exact for any realistic count.
        (self.ratio * requests as f64) as u64 + self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_only_when_idle() {
        let b = RetryBudget::new(0.2, 1, 10_000);
        assert_eq!(b.window_secs(), 10);
        let granted = (0..20).filter(|_| b.try_retry(0)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn bad_ratio_is_zero() {
        let b = RetryBudget::new(f64::NAN, 0, 1);
        b.on_request(0);
        assert!(!b.try_retry(0));
    }
}
