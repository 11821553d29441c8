//! Where the caller stands, in the headers SDKs read:
//! - OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest request and
//!   token policy (the one with the fewest units left);
//! - the IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) listing every
//!   policy that applied: `"free-rpm";q=20;w=60` and `"free-rpm";r=19;t=3`;
//! - `Retry-After` (whole seconds, at least 1) on a refusal that waiting can cure (not a prepaid
//!   balance's: it does not refill). A balance shows only in the `RateLimit` fields (`r=` is what
//!   the org may still spend).
//!
//! What a policy spells the same way on every request (its `RateLimit-Policy` item, its limit, the
//! name that starts its `RateLimit` item) is rendered once per config version ([`Fixed`]). A request
//! only writes its numbers, without `fmt`, into values allocated once at their exact length (a
//! `Vec` whose length is its capacity becomes the header's bytes without a copy).

use crate::chain::RequestCtx;
use http::{HeaderName, HeaderValue};
use leaky_config::{PolicyKind, Unit};
use leaky_limit::{Deny, Limiter, Status};
use std::time::Duration;

/// Per policy of one limiter (same indexes), what its headers say whatever the request.
pub(crate) struct Fixed {
    policies: Vec<PolicyHeaders>,
}

struct PolicyHeaders {
    /// `"name";q=quota`, then `;w=window` when the policy has a window.
    item: Box<[u8]>,
    /// `"name";r=`: the start of the policy's `RateLimit` item.
    state_prefix: Box<[u8]>,
    /// The quota, as OpenAI's `x-ratelimit-limit-*` value.
    limit: HeaderValue,
    /// OpenAI's headers: 0 for requests, 1 for tokens; `None` for the rest (a prepaid balance is
    /// only in `RateLimit`: OpenAI's headers describe rate limits).
    slot: Option<usize>,
    /// A prepaid balance does not refill: no time would help, only a credit.
    refills: bool,
}

impl Fixed {
    pub(crate) fn new(limiter: &Limiter) -> Self {
        let policies = limiter
            .policies
            .iter()
            .map(|p| {
                let (quota, window) = p.policy.quota_and_window();
                let mut item = format!("\"{}\";q={quota}", p.name);
                if window > 0 {
                    item.push_str(&format!(";w={window}"));
                }
                PolicyHeaders {
                    item: item.into_bytes().into_boxed_slice(),
                    state_prefix: format!("\"{}\";r=", p.name).into_bytes().into_boxed_slice(),
                    limit: HeaderValue::from(quota),
                    slot: match p.policy.unit {
                        Unit::Requests => Some(0),
                        Unit::Balance => None,
                        u if u.is_tokens() => Some(1),
                        _ => None,
                    },
                    refills: p.policy.kind != PolicyKind::Balance,
                }
            })
            .collect();
        Fixed { policies }
    }
}

/// `statuses`: (policy index, standing after the decision); iterated more than once.
pub(crate) fn add<I>(fixed: &Fixed, statuses: I, deny: Option<&Deny>, ctx: &mut RequestCtx)
where
    I: Iterator<Item = (usize, Status)> + Clone,
{
    let p = &fixed.policies;
    let mut tightest: [Option<(usize, Status)>; 2] = [None, None];
    let (mut policy_len, mut state_len) = (0, 0);
    for (n, (i, st)) in statuses.clone().enumerate() {
        let sep = if n == 0 { 0 } else { 2 };
        policy_len += sep + p[i].item.len();
        state_len += sep
            + p[i].state_prefix.len()
            + digits(st.remaining)
            + 3
            + digits(ceil_secs(st.reset_ns));
        if let Some(slot) = p[i].slot {
            if tightest[slot].is_none_or(|(_, t)| st.remaining < t.remaining) {
                tightest[slot] = Some((i, st));
            }
        }
    }
    let mut policy_field = Vec::with_capacity(policy_len);
    let mut state_field = Vec::with_capacity(state_len);
    for (n, (i, st)) in statuses.clone().enumerate() {
        if n > 0 {
            policy_field.extend_from_slice(b", ");
            state_field.extend_from_slice(b", ");
        }
        policy_field.extend_from_slice(&p[i].item);
        state_field.extend_from_slice(&p[i].state_prefix);
        state_field.extend_from_slice(Buf::u64(st.remaining).as_bytes());
        state_field.extend_from_slice(b";t=");
        state_field.extend_from_slice(Buf::u64(ceil_secs(st.reset_ns)).as_bytes());
    }
    let h = &mut ctx.response_headers;
    h.reserve(3 * tightest.iter().flatten().count() + 3);
    for (slot, [limit, remaining, reset]) in NAMES.into_iter().enumerate() {
        if let Some((i, st)) = tightest[slot] {
            h.push((limit, p[i].limit.clone()));
            push(h, remaining, Buf::u64(st.remaining).as_bytes());
            push(
                h,
                reset,
                duration_buf(Duration::from_nanos(st.reset_ns)).as_bytes(),
            );
        }
    }
    if let Ok(v) = HeaderValue::try_from(policy_field) {
        h.push((RATELIMIT_POLICY, v));
    }
    if let Ok(v) = HeaderValue::try_from(state_field) {
        h.push((RATELIMIT, v));
    }
    let mut statuses = statuses;
    let waitable = statuses.next().is_some_and(|(i, _)| p[i].refills);
    if let Some(d) = deny.filter(|d| !d.never_fits && waitable) {
        let secs = ceil_secs(d.retry_after_ns).max(1);
        push(h, http::header::RETRY_AFTER, Buf::u64(secs).as_bytes());
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

fn push(h: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        h.push((name, v));
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `00` to `99`: the two digits of every pair.
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// A short ASCII value written on the stack: a header value or part of one, without `fmt`.
struct Buf {
    bytes: [u8; 64],
    len: usize,
}

impl Buf {
    fn new() -> Self {
        Buf {
            bytes: [0; 64],
            len: 0,
        }
    }

    fn u64(n: u64) -> Self {
        let mut b = Buf::new();
        b.push_u64(n);
        b
    }

    /// At most 20 digits: callers stay within the 64 bytes. Two digits per division.
    fn push_u64(&mut self, mut n: u64) {
        let mut tmp = [0u8; 20];
        let mut at = tmp.len();
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            at -= 2;
            tmp[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            at -= 2;
            tmp[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            at -= 1;
            tmp[at] = b'0' + n as u8;
        }
        self.push(&tmp[at..]);
    }

    fn push(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        if let Some(dst) = self.bytes.get_mut(self.len..end) {
            dst.copy_from_slice(s);
            self.len = end;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub(crate) fn duration(d: Duration) -> String {
    String::from_utf8_lossy(duration_buf(d).as_bytes()).into_owned()
}

/// [`duration`] on the stack: at most 20 + 8 bytes (`{h}h{m}m{s}s`, minutes and seconds two digits).
fn duration_buf(d: Duration) -> Buf {
    let mut b = Buf::new();
    let ms = d.as_millis();
    if ms < 1000 {
        b.push_u64(ms as u64);
        b.push(b"ms");
        return b;
    }
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        b.push_u64(h);
        b.push(b"h");
    }
    if h > 0 || m > 0 {
        b.push_u64(m);
        b.push(b"m");
    }
    b.push_u64(s);
    b.push(b"s");
    b
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn formats_reset_like_openai() {
        assert_eq!(duration(Duration::from_millis(20)), "20ms");
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_millis(1500)), "2s");
        assert_eq!(duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn numbers_without_fmt() {
        for n in (0..100_000).chain([123_456_789, 1 << 40, u64::MAX / 10, u64::MAX]) {
            assert_eq!(Buf::u64(n).as_bytes(), n.to_string().as_bytes());
            assert_eq!(digits(n), n.to_string().len());
        }
        assert_eq!(
            duration(Duration::from_secs(u64::MAX)),
            "5124095576030431h0m15s"
        );
        assert_eq!(duration(Duration::from_nanos(1)), "0ms");
        assert_eq!(duration(Duration::from_nanos(999_999_999)), "999ms");
        assert_eq!(duration(Duration::from_nanos(1_000_000_001)), "2s");
        assert_eq!(duration(Duration::from_secs(3600)), "1h0m0s");
    }

    /// The headers as `fmt` spelled them before [`Fixed`]: the oracle the fast path must match.
    fn reference(
        limiter: &Limiter,
        statuses: &[(usize, Status)],
        deny: Option<&Deny>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        use std::fmt::Write;
        let mut h = Vec::new();
        let push = |h: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, v: String| {
            if let Ok(v) = HeaderValue::try_from(v) {
                h.push((name, v));
            }
        };
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
            let (r, t) = (st.remaining, ceil_secs(st.reset_ns));
            let _ = write!(state_field, "{sep}\"{}\";r={r};t={t}", p.name);
            let slot = match p.policy.unit {
                Unit::Requests => 0,
                Unit::Balance => continue,
                u if u.is_tokens() => 1,
                _ => continue,
            };
            if tightest[slot].is_none_or(|(_, t)| st.remaining < t.remaining) {
                tightest[slot] = Some((quota, *st));
            }
        }
        for (slot, [limit, remaining, reset]) in NAMES.into_iter().enumerate() {
            if let Some((quota, st)) = tightest[slot] {
                push(&mut h, limit, quota.to_string());
                push(&mut h, remaining, st.remaining.to_string());
                let d = Duration::from_nanos(st.reset_ns);
                let ms = d.as_millis();
                let v = if ms < 1000 {
                    format!("{ms}ms")
                } else {
                    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                    match (s / 3600, (s % 3600) / 60, s % 60) {
                        (0, 0, s) => format!("{s}s"),
                        (0, m, s) => format!("{m}m{s}s"),
                        (h, m, s) => format!("{h}h{m}m{s}s"),
                    }
                };
                push(&mut h, reset, v);
            }
        }
        push(&mut h, RATELIMIT_POLICY, policy_field);
        push(&mut h, RATELIMIT, state_field);
        let refills = |i: &usize| limiter.policies[*i].policy.kind != PolicyKind::Balance;
        let waitable = statuses.first().is_some_and(|(i, _)| refills(i));
        if let Some(d) = deny.filter(|d| !d.never_fits && waitable) {
            let secs = ceil_secs(d.retry_after_ns).max(1);
            push(&mut h, http::header::RETRY_AFTER, secs.to_string());
        }
        h
    }

    #[test]
    fn same_headers_as_formatting_them() {
        let yaml = "providers:
  openai: { base_url: http://127.0.0.1:1 }
routes:
  - { name: v1, prefix: /v1, upstream: { provider: openai } }
tiers:
  t:
    limits:
      - { name: t-rpm, unit: requests, rate: 20, per: minute }
      - { name: t-tpm, unit: tokens, rate: 1000, per: minute }
      - { name: t.tpd, unit: tokens, quota: daily, limit: 100000 }
      - { name: t_ptok, unit: prompt_tokens, rate: 50, per: second, burst: 70 }
      - { name: t-mo, unit: completion_tokens, quota: monthly, limit: 9000000000000 }
limits:
  policies:
    - { name: inflight, unit: concurrent_requests, limit: 3 }
    - { name: prepaid, unit: balance }
    - { name: hourly, unit: requests, quota: hourly, limit: 5 }
balances:
  acme: 1000
";
        let dir = std::path::Path::new("/");
        let config =
            leaky_config::load_text(dir, yaml, dir, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(leaky_limit::MemoryStore::new());
        let limiter = Limiter::new(&config.limits, &config.tiers, store, None, Arc::new(|| 0))
            .unwrap_or_else(|e| panic!("{e}"));
        let fixed = Fixed::new(&limiter);
        let n = limiter.policies.len();
        assert_eq!(n, 8);
        // A fixed pseudo-random walk over subsets, orders, standings and refusals.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let numbers = [0, 1, 999, 1000, 59_999_999_999, 3_600_000_000_000, u64::MAX];
        for round in 0..2000 {
            let len = 1 + (next() % n as u64) as usize;
            let statuses: Vec<(usize, Status)> = (0..len)
                .map(|_| {
                    let pick = |r: u64| {
                        if r.is_multiple_of(3) {
                            numbers[(r / 3 % 7) as usize]
                        } else {
                            r % 100_000
                        }
                    };
                    let st = Status {
                        limit: next(),
                        remaining: pick(next()),
                        reset_ns: pick(next()).saturating_mul(1_000_003),
                    };
                    ((next() % n as u64) as usize, st)
                })
                .collect();
            let deny = (round % 2 == 1).then(|| Deny {
                retry_after_ns: next() % 5_000_000_000,
                never_fits: round % 7 == 0,
                status: statuses[0].1,
            });
            let mut ctx = RequestCtx::default();
            add(&fixed, statuses.iter().copied(), deny.as_ref(), &mut ctx);
            assert_eq!(
                ctx.response_headers,
                reference(&limiter, &statuses, deny.as_ref()),
                "{statuses:?} {deny:?}"
            );
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000_000_000), 1);
        assert_eq!(ceil_secs(1_000_000_001), 2);
    }
}
