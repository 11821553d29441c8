//! Payment webhooks: `Stripe-Signature` verification (HMAC-SHA256 over `"<t>.<body>"`, a timestamp
//! tolerance against replay) and idempotent recording in `billing.processed_webhooks`. Delivery is at
//! least once and out of order, so an event only hints: it wakes the purchase's saga, which then asks
//! the provider for the intent's state itself. A duplicate inserts nothing and wakes nothing.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use super::saga;
use crate::http::{Problem, ProblemKind};

/// What `POST /v1/webhooks/payments` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    pub id: String,
    /// True when the event was seen before (it had no second effect).
    pub duplicate: bool,
    /// The purchase whose saga was woken, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase: Option<Uuid>,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 (RFC 2104), by the `hmac` crate.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // `new_from_slice` accepts keys of any length for HMAC; the error branch is unreachable but
    // handled without a panic: an empty MAC matches no signature.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// The `Stripe-Signature` value for `body` at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &signed))
    )
}

/// Checks `header` (`t=<unix>,v1=<hex>[,v1=…]`) against `body`: one `v1` must match and `t` must be
/// within `tolerance_secs` of `now`.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), String> {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = t.ok_or("the signature has no timestamp `t`")?;
    if (now.timestamp() - t).abs() > tolerance_secs {
        return Err(format!(
            "the signature's timestamp is outside the {tolerance_secs} s tolerance"
        ));
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let matches = |c: &Vec<u8>| {
        HmacSha256::new_from_slice(secret.as_bytes()).is_ok_and(|mut mac| {
            mac.update(&signed);
            // `verify_slice` compares in constant time.
            mac.verify_slice(c).is_ok()
        })
    };
    if candidates.iter().any(matches) {
        Ok(())
    } else {
        Err("no `v1` signature matches".to_owned())
    }
}

/// The payment intent an event is about: the object itself, or the intent a refund or charge names.
fn intent_of(event: &Value) -> Option<String> {
    let object = &event["data"]["object"];
    let id = if object["object"] == "payment_intent" {
        object["id"].as_str()
    } else {
        object["payment_intent"].as_str()
    };
    id.map(str::to_owned)
}

/// Verifies, records (once per event id) and wakes the purchase's saga.
pub async fn receive(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &super::Settings,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Received, Problem> {
    let bad = |m: String| Problem::new(ProblemKind::InvalidSignature, m);
    let header =
        signature.ok_or_else(|| bad("the `Stripe-Signature` header is missing".to_owned()))?;
    verify(
        header,
        body,
        &settings.webhook_secret,
        now,
        settings.webhook_tolerance_secs,
    )
    .map_err(bad)?;
    let event: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::new(ProblemKind::MalformedJson, e.to_string()))?;
    let id = event["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Problem::field("id", "the event has no id"))?
        .to_owned();
    let kind = event["type"].as_str().unwrap_or("").to_owned();
    let intent = intent_of(&event);
    let inserted = sqlx::query(
        "INSERT INTO billing.processed_webhooks (event_id, type, payment_intent, received_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&id)
    .bind(&kind)
    .bind(intent.as_deref())
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    let mut purchase = None;
    if inserted {
        let found: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM billing.purchases WHERE payment_intent = $1")
                .bind(intent.as_deref())
                .fetch_optional(pool)
                .await?;
        if let Some(p) = found {
            saga::wake(pool, p, now).await?;
            purchase = Some(p);
        }
    }
    tracing::info!(event = %id, kind = %kind, duplicate = !inserted, "payment webhook");
    Ok(Received {
        id,
        duplicate: !inserted,
        purchase,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_verify_only_with_the_secret_and_in_time() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let header = sign("whsec", now.timestamp(), b"{}");
        assert!(verify(&header, b"{}", "whsec", now, 300).is_ok());
        assert!(verify(&header, b"{ }", "whsec", now, 300).is_err());
        assert!(verify(&header, b"{}", "other", now, 300).is_err());
        let late = now + chrono::Duration::seconds(301);
        assert!(verify(&header, b"{}", "whsec", late, 300).is_err());
        assert!(verify("v1=00", b"{}", "whsec", now, 300).is_err());
    }
}
