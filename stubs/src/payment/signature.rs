//! Stripe-style webhook signatures: `Stripe-Signature: t=<unix secs>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<raw body>")>`, checked against a tolerance so a
//! captured delivery cannot be replayed later.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Why [`verify_signature`] refused a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("timestamp {timestamp} is outside the tolerance of now ({now})")]
    Stale { timestamp: i64, now: i64 },
}

/// The keyed MAC over `"<t>.<body>"`; `None` never happens for HMAC (any
/// key length is valid) but keeps the function total.
fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m)
}

/// The `Stripe-Signature` header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v1={tag}")
}

/// Checks a `Stripe-Signature` header: one of its `v1` signatures must be the
/// HMAC of `"<t>.<body>"` under `secret` (compared in constant time), and `t`
/// within `tolerance` of `now` (Unix seconds).
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => sigs.push(hex::decode(s).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let ok = sigs
        .iter()
        .any(|s| mac(secret, timestamp, body).is_some_and(|m| m.verify_slice(s).is_ok()));
    if !ok {
        return Err(SignatureError::Mismatch);
    }
    let tol = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tol.unsigned_abs() {
        return Err(SignatureError::Stale { timestamp, now });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_verifies_with_its_secret_only() {
        let h = sign("whsec_a", 1_000, b"{\"x\":1}");
        assert_eq!(
            verify_signature("whsec_a", &h, b"{\"x\":1}", 1_010, FIVE_MIN),
            Ok(())
        );
        assert_eq!(
            verify_signature("whsec_b", &h, b"{\"x\":1}", 1_010, FIVE_MIN),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("whsec_a", &h, b"{\"x\":2}", 1_010, FIVE_MIN),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_malformed_headers_fail() {
        let h = sign("whsec_a", 1_000, b"{}");
        assert_eq!(
            verify_signature("whsec_a", &h, b"{}", 1_301, FIVE_MIN),
            Err(SignatureError::Stale {
                timestamp: 1_000,
                now: 1_301
            })
        );
        assert_eq!(
            verify_signature("whsec_a", "v1=00", b"{}", 0, FIVE_MIN),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature("whsec_a", "t=1", b"{}", 0, FIVE_MIN),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature("whsec_a", "t=1,v1=zz", b"{}", 0, FIVE_MIN),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = sign("whsec_a", 7, b"{}");
        let header = format!(
            "t=7,v1={},{}",
            "00".repeat(32),
            good.trim_start_matches("t=7,")
        );
        assert_eq!(
            verify_signature("whsec_a", &header, b"{}", 7, FIVE_MIN),
            Ok(())
        );
    }
}
