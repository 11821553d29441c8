//! Where the caller stands, in the headers SDKs read:
//! - OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest request and
//!   token policy (the one with the fewest units left);
//! - the IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) listing every
//!   policy that applied: `"free-rpm";q=20;w=60` and `"free-rpm";r=19;t=3`;
//! - `Retry-After` (whole seconds, at least 1) on a refusal that waiting can cure (not a prepaid
//!   balance's: it does not refill). A balance shows only in the `RateLimit` fields (`r=` is what
//!   the org may still spend).

use crate::chain::RequestCtx;
use http::{HeaderName, HeaderValue};
use leaky_limit::{Deny, Limiter, Status};
use std::fmt::Write;
use std::time::Duration;

/// `statuses`: (policy index, standing after the decision).
pub(crate) fn add(
    limiter: &Limiter,
    statuses: &[(usize, Status)],
    deny: Option<&Deny>,
    ctx: &mut RequestCtx,
) {
    let mut tightest: [Option<(u64, Status)>; 2] = [None, None];
    let mut policy_field = String::new();
    let mut state_field = String::new();
    for (i, st) in statuses {
        let p = &limiter.policies[*i];
        let (quota, window) = p.policy.quota_and_window();
        let sep = if policy_field.is_empty() { "" } else { ", " };
        let _ = write!(policy_field, "{sep}\"{}\";q={quota}", p.name);
        if window > 0 {
            let _ = write!(policy_field, ";w={window}");
        }
        let _ = write!(
            state_field,
            "{sep}\"{}\";r={};t={}",
            p.name,
            st.remaining,
            ceil_secs(st.reset_ns)
        );
        let slot = match p.policy.unit {
            leaky_config::Unit::Requests => 0,
            // OpenAI's headers describe rate limits; a prepaid balance is only in `RateLimit`.
            leaky_config::Unit::Balance => continue,
            u if u.is_tokens() => 1,
            _ => continue,
        };
        if tightest[slot].is_none_or(|(_, t)| st.remaining < t.remaining) {
            tightest[slot] = Some((quota, *st));
        }
    }
    let h = &mut ctx.response_headers;
    for (slot, [limit, remaining, reset]) in NAMES.into_iter().enumerate() {
        if let Some((quota, st)) = tightest[slot] {
            push(h, limit, quota.to_string());
            push(h, remaining, st.remaining.to_string());
            push(h, reset, duration(Duration::from_nanos(st.reset_ns)));
        }
    }
    push(h, RATELIMIT_POLICY, policy_field);
    push(h, RATELIMIT, state_field);
    // A prepaid balance does not refill: no time would help, only a credit.
    let refills = |i: &usize| limiter.policies[*i].policy.kind != leaky_config::PolicyKind::Balance;
    let waitable = statuses.first().is_some_and(|(i, _)| refills(i));
    if let Some(d) = deny.filter(|d| !d.never_fits && waitable) {
        let secs = ceil_secs(d.retry_after_ns).max(1);
        push(h, http::header::RETRY_AFTER, secs.to_string());
    }
}

// Header names are constants: `from_static` runs at compile time (an invalid name fails the build).
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// OpenAI's names, for request and token policies.
const NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

fn push(h: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, value: String) {
    if let Ok(v) = HeaderValue::try_from(value) {
        h.push((name, v));
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_reset_like_openai() {
        assert_eq!(duration(Duration::from_millis(20)), "20ms");
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_millis(1500)), "2s");
        assert_eq!(duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000_000_000), 1);
        assert_eq!(ceil_secs(1_000_000_001), 2);
    }
}
