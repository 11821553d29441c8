//! Webhook signatures: `Leaky-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. The
//! timestamp is signed with the body, so a receiver that rejects stale `t` also rejects replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Leaky-Signature";
/// The header that carries the event id (receivers dedupe on it: delivery is at least once).
pub const EVENT_ID_HEADER: &str = "Leaky-Event-Id";
/// How far from now a receiver should accept `t` (what [`verify`] is called with in the docs).
pub const TOLERANCE_SECS: i64 = 300;

fn mac(secret: &str, t: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable_key(),
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac
}

#[cold]
fn unreachable_key() -> HmacSha256 {
    // Only reachable if `hmac` ever refused a key length; an empty key keeps signing total.
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

/// The `Leaky-Signature` value for `body` sent at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature has no timestamp `t`")]
    NoTimestamp,
    #[error("the signature's timestamp is more than {0} s from now")]
    Stale(i64),
    #[error("no `v1` signature matches the body")]
    Mismatch,
}

/// Checks `header` against `body` the way a receiver should: one `v1` must match (constant time)
/// and `t` must be within `tolerance_secs` of `now_unix`.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::NoTimestamp)?;
    if (now_unix - t).abs() > tolerance_secs {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    let expected = mac(secret, t, body);
    if candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_tampering_and_stale_timestamps() {
        let body = br#"{"id":"e1","type":"purchase.completed"}"#;
        let header = sign("whsec_x", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(verify(&header, body, "whsec_x", 1_700_000_100, 300), Ok(()));
        let tampered = br#"{"id":"e1","type":"purchase.compensated"}"#;
        assert_eq!(
            verify(&header, tampered, "whsec_x", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, "other", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, "whsec_x", 1_700_000_301, 300),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify("v1=00", body, "whsec_x", 0, 300),
            Err(SignatureError::NoTimestamp)
        );
    }

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Python: hmac.new(b"whsec_x", b'1700000000.{"id":"e1"}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign("whsec_x", 1_700_000_000, br#"{"id":"e1"}"#),
            "t=1700000000,v1=a79a45f1785723c7934efae43dd0da7bcc729155a9006f33c0c68f99e4d22add"
        );
    }
}
