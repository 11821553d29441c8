//! Retry delays: exponential backoff with full jitter, the upstream's own `retry-after` hints, and a
//! tiny seeded PRNG (no `rand` dependency) for the jitter.

use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Upper bound of any delay read from `retry-after` / `retry-after-ms` (one hour).
pub const RETRY_AFTER_CAP_MS: u64 = 3_600_000;

/// Full-jitter backoff ("Exponential Backoff And Jitter", AWS): a delay drawn uniformly from
/// `[0, min(max_ms, base_ms · 2^(attempt−1))]`, both ends included, using `rand` as the random draw.
/// `attempt` is 1 for the first retry (0 is treated as 1); no overflow for any `attempt`.
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64, rand: u64) -> u64 {
    let shift = attempt.saturating_sub(1).min(63);
    let cap = base_ms.saturating_mul(1u64 << shift).min(max_ms);
    // Multiply-high maps `rand` onto `0..=cap` without modulo bias or overflow.
    ((u128::from(rand) * (u128::from(cap) + 1)) >> 64) as u64
}

/// The delay an upstream asked for, in ms, relative to `now_unix_ms` (Unix epoch ms; only used for an
/// HTTP-date). Reads `retry-after-ms` (milliseconds, may be fractional; OpenAI and Azure send it), else
/// `retry-after` as delta-seconds (integer or decimal) or an HTTP-date (IMF-fixdate,
/// `Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past gives 0). Fractions round up to the next ms.
/// Capped at [`RETRY_AFTER_CAP_MS`]. `None` when both are absent or unparsable.
pub fn retry_after_ms(headers: &HeaderMap, now_unix_ms: u64) -> Option<u64> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ms = text("retry-after-ms")
        .and_then(|v| parse_decimal(v, 1.0))
        .or_else(|| {
            let v = text("retry-after")?;
            parse_decimal(v, 1000.0)
                .or_else(|| http_date_ms(v).map(|at| at.saturating_sub(now_unix_ms)))
        })?;
    Some(ms.min(RETRY_AFTER_CAP_MS))
}

/// A non-negative plain decimal (`12`, `1.5`, `.5`; no sign, exponent, `inf` or `NaN`) times `scale`,
/// rounded up to an integer.
fn parse_decimal(v: &str, scale: f64) -> Option<u64> {
    let mut dots = 0;
    let mut digits = 0;
    for c in v.bytes() {
        match c {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    let x = v.parse::<f64>().ok()? * scale;
    // Saturating float → int conversion; a huge value is capped by the caller anyway.
    x.is_finite().then(|| x.ceil() as u64)
}

/// Unix ms of an HTTP-date in IMF-fixdate form.
fn http_date_ms(v: &str) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    u64::try_from(at.timestamp_millis()).ok()
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-mixed PRNG. Good for jitter and tests; not
/// for anything secret.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..n` (multiply-high; `n = 0` gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer: a bijective mix of all 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh random-looking `u64` for callers without their own RNG (jitter, tie rotation): one atomic
/// add plus a mix per call. Seeded once per process from the clock and a static's address; not
/// cryptographic.
pub fn jitter_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix64(nanos ^ (&COUNTER as *const AtomicU64 as u64))
    });
    mix64(seed.wrapping_add(COUNTER.fetch_add(GOLDEN, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567 from the reference implementation.
        let mut r = SplitMix::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn jitter_seed_varies() {
        let a = jitter_seed();
        let b = jitter_seed();
        assert_ne!(a, b);
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal("1.5", 1000.0), Some(1500));
        assert_eq!(parse_decimal(".5", 1.0), Some(1));
        assert_eq!(parse_decimal("-1", 1.0), None);
        assert_eq!(parse_decimal("1e3", 1.0), None);
        assert_eq!(parse_decimal("1.2.3", 1.0), None);
        assert_eq!(parse_decimal(".", 1.0), None);
        assert_eq!(parse_decimal("", 1.0), None);
    }
}
