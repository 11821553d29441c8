//! A deployment's `429` cool-down, and the provider-wide signal that justifies one.
//!
//! A `429` takes a deployment out of the pool (for the provider's `retry-after`) only on provider-wide
//! evidence, never because one tenant's request provoked it (a prompt larger than the account's
//! tokens-per-minute, a burst of its own):
//!
//! * the response's own rate-limit headers say the account is out ([`provider_exhausted`]: a
//!   `…ratelimit…remaining…` header at 0, as OpenAI, Azure OpenAI and Anthropic send, or an IETF
//!   `RateLimit` item with `r=0`), or
//! * `429`s without such headers reached at least `min_tenants` distinct tenants within the window
//!   (providers that send no rate-limit headers, such as Gemini and DashScope, cool down this way).
//!
//! Every cool-down is capped at `max_ms` (0: cool-downs off). Lock-free: one atomic `until`, and the
//! tenant set of [`RecentTenants`] touched only on a `429`.

use super::tenants::{Cause, RecentTenants};
use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `429` cool-down of one deployment.
pub struct CoolDown {
    /// `now_ms` before which the deployment is skipped.
    until: AtomicU64,
    tenants: RecentTenants,
    min_tenants: u32,
    max_ms: u64,
}

impl CoolDown {
    /// `window_ms` and `min_tenants` as the breaker's; `max_ms` caps every cool-down (0: none).
    pub fn new(window_ms: u64, min_tenants: u32, max_ms: u64) -> Self {
        Self {
            until: AtomicU64::new(0),
            tenants: RecentTenants::new(window_ms),
            min_tenants,
            max_ms,
        }
    }

    /// `now_ms` before which the deployment is skipped (0 or past: not cooling).
    pub fn until(&self) -> u64 {
        self.until.load(Ordering::Relaxed)
    }

    /// A `429` at `now_ms` that asked for `wait_ms`: the cool-down applied (capped), or `None` when the
    /// evidence is not provider-wide (yet) or cool-downs are off. `Cause::Provider` is a response that
    /// says the account is exhausted.
    pub fn on_429(&self, now_ms: u64, wait_ms: u64, cause: Cause) -> Option<u64> {
        if self.max_ms == 0 {
            return None;
        }
        let provider_wide = match cause {
            Cause::Provider => true,
            Cause::Tenant(t) => self.tenants.record_and_reach(now_ms, t, self.min_tenants),
        };
        if !provider_wide {
            return None;
        }
        let ms = wait_ms.min(self.max_ms);
        self.until
            .fetch_max(now_ms.saturating_add(ms), Ordering::Relaxed);
        Some(ms)
    }
}

/// Whether a response's rate-limit headers say the provider account (the gateway's credential) has
/// nothing left: any header whose name holds both `ratelimit` and `remaining` with a value ≤ 0
/// (`x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`,
/// `anthropic-ratelimit-tokens-remaining`, IETF `ratelimit-remaining`...), or an IETF structured
/// `RateLimit` header with an item at `r=0`. Called on `429`s only.
pub fn provider_exhausted(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        let name = name.as_str();
        let Ok(value) = value.to_str() else {
            return false;
        };
        if name == "ratelimit" {
            return value
                .split([',', ';'])
                .any(|param| param.trim().strip_prefix("r=").is_some_and(at_most_zero));
        }
        name.contains("ratelimit") && name.contains("remaining") && at_most_zero(value)
    })
}

fn at_most_zero(v: &str) -> bool {
    v.trim().parse::<f64>().is_ok_and(|x| x <= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: Cause = Cause::Tenant(0x0123_4567_89ab_cdef);
    const GLOBEX: Cause = Cause::Tenant(0xfedc_ba98_7654_3210);

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn one_tenants_429s_do_not_cool_the_deployment() {
        let c = CoolDown::new(10_000, 2, 30_000);
        for t in 0..100 {
            assert_eq!(c.on_429(t, 120_000, ACME), None);
        }
        assert_eq!(c.until(), 0);
        // A second tenant within the window: provider-wide, capped at 30 s.
        assert_eq!(c.on_429(100, 120_000, GLOBEX), Some(30_000));
        assert_eq!(c.until(), 30_100);
    }

    #[test]
    fn the_tenants_must_be_within_the_window() {
        let c = CoolDown::new(10_000, 2, 30_000);
        assert_eq!(c.on_429(0, 1_000, ACME), None);
        assert_eq!(c.on_429(10_000, 1_000, GLOBEX), None);
        assert_eq!(c.on_429(10_001, 1_000, ACME), Some(1_000));
    }

    #[test]
    fn provider_exhaustion_cools_at_once_capped() {
        let c = CoolDown::new(10_000, 2, 30_000);
        assert_eq!(c.on_429(5, 120_000, Cause::Provider), Some(30_000));
        assert_eq!(c.until(), 30_005);
        // A shorter one later never shortens it.
        assert_eq!(c.on_429(6, 1_000, Cause::Provider), Some(1_000));
        assert_eq!(c.until(), 30_005);
        // Zero turns cool-downs off.
        let off = CoolDown::new(10_000, 2, 0);
        assert_eq!(off.on_429(0, 1_000, Cause::Provider), None);
        assert_eq!(off.until(), 0);
    }

    #[test]
    fn exhaustion_headers() {
        for h in [
            headers(&[("x-ratelimit-remaining-requests", "0")]),
            headers(&[
                ("x-ratelimit-remaining-requests", "12"),
                ("x-ratelimit-remaining-tokens", " 0 "),
            ]),
            headers(&[("anthropic-ratelimit-tokens-remaining", "0")]),
            headers(&[("ratelimit-remaining", "0")]),
            headers(&[("ratelimit", r#""default";r=0;t=30"#)]),
            headers(&[("ratelimit", r#""rpm";r=5;t=1, "tpm";r=0;t=30"#)]),
        ] {
            assert!(provider_exhausted(&h), "{h:?}");
        }
        for h in [
            headers(&[]),
            headers(&[("retry-after", "120")]),
            headers(&[
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-remaining-tokens", "150000"),
                ("x-ratelimit-limit-tokens", "0"),
            ]),
            headers(&[("x-ratelimit-remaining-requests", "soon")]),
            headers(&[("ratelimit", r#""default";r=10;t=30"#)]),
        ] {
            assert!(!provider_exhausted(&h), "{h:?}");
        }
    }
}
