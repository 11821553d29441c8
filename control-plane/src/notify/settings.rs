//! An org's notification settings: `notify_email`, an address that receives the org's email
//! notifications besides its `org-admin` users (`GET`/`PUT /v1/orgs/{org}/notification-settings`,
//! audited).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::NotifyError;
use crate::audit::{self, Change};
use crate::http::FieldError;
use crate::outbox::NOTIFY_TOPIC;
use crate::tenancy;

/// `PUT /v1/orgs/{org}/notification-settings` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// An address that gets the org's email notifications besides its `org-admin` users; `null`
    /// removes it. At most 254 characters, one `@`.
    pub notify_email: Option<String>,
}

/// An org's notification settings.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OrgSettings {
    pub org: Uuid,
    pub notify_email: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

fn check(body: &SettingsBody) -> Result<(), NotifyError> {
    let Some(email) = body.notify_email.as_deref() else {
        return Ok(());
    };
    let ok = email.len() <= 254
        && email.split('@').count() == 2
        && email.split('@').all(|p| !p.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.parse::<lettre::Address>().is_ok();
    if ok {
        Ok(())
    } else {
        let e = FieldError::new("notify_email", "must be an email address");
        Err(NotifyError::Invalid(vec![e]))
    }
}

/// `org`'s settings (no address until one is set; 404 unknown org).
pub async fn get(pool: &PgPool, org: Uuid) -> Result<OrgSettings, NotifyError> {
    tenancy::orgs::get(pool, org).await?;
    let row: Option<(Option<String>, DateTime<Utc>)> =
        sqlx::query_as("SELECT email, updated_at FROM notify.org_settings WHERE org_id = $1")
            .bind(org)
            .fetch_optional(pool)
            .await?;
    Ok(OrgSettings {
        org,
        notify_email: row.as_ref().and_then(|r| r.0.clone()),
        updated_at: row.map(|r| r.1),
    })
}

/// Replaces `org`'s settings (audited as `org.notification_settings`).
pub async fn put(
    pool: &PgPool,
    now: DateTime<Utc>,
    actor: &str,
    org: Uuid,
    body: &SettingsBody,
) -> Result<OrgSettings, NotifyError> {
    check(body)?;
    tenancy::orgs::get(pool, org).await?;
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query(
        "INSERT INTO notify.org_settings (org_id, email, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (org_id) DO UPDATE SET email = $2, updated_at = $3",
    )
    .bind(org)
    .bind(body.notify_email.as_deref())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let change = Change {
        actor,
        action: "org.notification_settings",
        object_kind: "org",
        object_id: org.to_string(),
        detail: serde_json::json!({"notify_email": body.notify_email}),
    };
    audit::with_event(
        &mut tx,
        NOTIFY_TOPIC,
        "org",
        "org.notification_settings_changed",
        change,
    )
    .await?;
    tx.commit().await?;
    Ok(OrgSettings {
        org,
        notify_email: body.notify_email.clone(),
        updated_at: Some(now),
    })
}

/// `org`'s notify email, if set, read on `conn`.
pub async fn notify_email(
    conn: &mut PgConnection,
    org: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    let email: Option<Option<String>> =
        sqlx::query_scalar("SELECT email FROM notify.org_settings WHERE org_id = $1")
            .bind(org)
            .fetch_optional(conn)
            .await?;
    Ok(email.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notify_email_must_be_an_address_or_null() {
        let body = |e: Option<&str>| SettingsBody {
            notify_email: e.map(str::to_owned),
        };
        assert!(check(&body(None)).is_ok());
        assert!(check(&body(Some("ops@acme.example"))).is_ok());
        for bad in [
            "",
            "ops",
            "a@b@c",
            "@acme.example",
            "ops@",
            "o ps@acme.example",
        ] {
            assert!(check(&body(Some(bad))).is_err(), "{bad}");
        }
    }
}
