//! Org webhook endpoints: create (the secret is returned once), list, delete — each change audited in
//! its own transaction. A URL must be `https`, except on a loopback host (local receivers, tests).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{NotifyError, EVENT_TYPES};
use crate::audit::{self, Change};
use crate::http::FieldError;
use crate::outbox::NOTIFY_TOPIC;
use crate::tenancy;

/// Most endpoints one org may have.
pub const MAX_PER_ORG: i64 = 20;

/// `POST /v1/orgs/{org}/webhooks` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// Where deliveries are POSTed: `https://…` (plain `http` only on a loopback host), ≤ 2048 characters.
    pub url: String,
    /// Event types to deliver (see the list in the description), or `["*"]` for all.
    pub events: Vec<String>,
}

/// A webhook endpoint as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    #[sqlx(rename = "org_id")]
    pub org: Uuid,
    pub url: String,
    pub events: Vec<String>,
    /// False once disabled after repeated failed deliveries.
    pub enabled: bool,
    pub consecutive_failures: i32,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A created endpoint with its signing secret (shown this once).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The HMAC-SHA256 key of `Leaky-Signature`; store it, it is not shown again.
    pub secret: String,
}

const COLUMNS: &str =
    "id, org_id, url, events, enabled, consecutive_failures, disabled_at, created_at";

/// The problems of `body` (empty when valid).
pub fn check(body: &NewEndpoint) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Err(why) = check_url(&body.url) {
        errors.push(FieldError::new("url", why));
    }
    if body.events.is_empty() {
        errors.push(FieldError::new(
            "events",
            "must name at least one event type or `*`",
        ));
    }
    for (i, e) in body.events.iter().enumerate() {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            let known = EVENT_TYPES.join(", ");
            errors.push(FieldError::new(
                format!("events[{i}]"),
                format!("unknown event type `{e}` (known: *, {known})"),
            ));
        }
    }
    errors
}

fn check_url(raw: &str) -> Result<(), String> {
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    let Some(host) = url.host_str() else {
        return Err("must have a host".into());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be https (plain http only on a loopback host)".into()),
    }
}

/// A new random secret: `whsec_` and 32 random bytes in hex.
fn new_secret() -> Result<String, NotifyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NotifyError::NoRandomness(e.to_string()))?;
    Ok(format!("whsec_{}", hex::encode(bytes)))
}

/// Creates an endpoint for `org` (404 unknown org, 422 bad input, 409 at [`MAX_PER_ORG`]).
pub async fn create(
    pool: &PgPool,
    now: DateTime<Utc>,
    actor: &str,
    org: Uuid,
    body: &NewEndpoint,
) -> Result<Created, NotifyError> {
    let errors = check(body);
    if !errors.is_empty() {
        return Err(NotifyError::Invalid(errors));
    }
    tenancy::orgs::get(pool, org).await?;
    let secret = new_secret()?;
    let mut tx = crate::db::begin(pool).await?;
    // Serializes creations per org, so the limit holds under concurrency.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('notify.endpoints:' || $1::text))")
        .bind(org)
        .execute(&mut *tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.endpoints WHERE org_id = $1")
        .bind(org)
        .fetch_one(&mut *tx)
        .await?;
    if n >= MAX_PER_ORG {
        let msg = format!("an org has at most {MAX_PER_ORG} webhook endpoints");
        return Err(NotifyError::Conflict(msg));
    }
    let sql = format!(
        "INSERT INTO notify.endpoints (id, org_id, url, events, secret, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    );
    let endpoint: Endpoint = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(&body.url)
        .bind(&body.events)
        .bind(&secret)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    let change = Change {
        actor,
        action: "webhook.create",
        object_kind: "webhook",
        object_id: endpoint.id.to_string(),
        detail: serde_json::json!({"org": org, "url": body.url, "events": body.events}),
    };
    audit::with_event(&mut tx, NOTIFY_TOPIC, "webhook", "webhook.created", change).await?;
    tx.commit().await?;
    Ok(Created { endpoint, secret })
}

/// The endpoints of `org`, oldest first (404 unknown org).
pub async fn list(pool: &PgPool, org: Uuid) -> Result<Vec<Endpoint>, NotifyError> {
    tenancy::orgs::get(pool, org).await?;
    let sql =
        format!("SELECT {COLUMNS} FROM notify.endpoints WHERE org_id = $1 ORDER BY created_at, id");
    Ok(sqlx::query_as(&sql).bind(org).fetch_all(pool).await?)
}

/// Deletes endpoint `id` of `org` and cancels its pending deliveries (404 when unknown).
pub async fn delete(pool: &PgPool, actor: &str, org: Uuid, id: Uuid) -> Result<(), NotifyError> {
    let mut tx = crate::db::begin(pool).await?;
    let url: Option<String> = sqlx::query_scalar(
        "DELETE FROM notify.endpoints WHERE id = $1 AND org_id = $2 RETURNING url",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(url) = url else {
        return Err(NotifyError::NotFound(format!(
            "webhook `{id}` of org `{org}` not found"
        )));
    };
    sqlx::query(
        "UPDATE notify.deliveries SET status = 'cancelled', locked_until = NULL
         WHERE channel = 'webhook' AND target = $1 AND status = 'pending'",
    )
    .bind(id.to_string())
    .execute(&mut *tx)
    .await?;
    let change = Change {
        actor,
        action: "webhook.delete",
        object_kind: "webhook",
        object_id: id.to_string(),
        detail: serde_json::json!({"org": org, "url": url}),
    };
    audit::with_event(&mut tx, NOTIFY_TOPIC, "webhook", "webhook.deleted", change).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(url: &str, events: &[&str]) -> NewEndpoint {
        NewEndpoint {
            url: url.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    fn fields(b: &NewEndpoint) -> Vec<String> {
        check(b).into_iter().map(|e| e.field).collect::<Vec<_>>()
    }

    #[test]
    fn https_is_required_except_on_loopback_and_event_types_are_checked() {
        assert!(fields(&body("https://hooks.example.com/x", &["*"])).is_empty());
        assert!(fields(&body("http://127.0.0.1:9/x", &["purchase.completed"])).is_empty());
        assert!(fields(&body("http://[::1]:9/x", &["*"])).is_empty());
        assert!(fields(&body("http://localhost/x", &["*"])).is_empty());
        assert_eq!(fields(&body("http://hooks.example.com/x", &["*"])), ["url"]);
        assert_eq!(fields(&body("ftp://127.0.0.1/x", &["*"])), ["url"]);
        assert_eq!(fields(&body("not a url", &[])), ["url", "events"]);
        assert_eq!(
            fields(&body("https://a.example/x", &["*", "nope"])),
            ["events[1]"]
        );
    }
}
