//! Provider credentials at rest (issue 14): the vault of named upstream API keys
//! (`identity.provider_credentials`, migration `0017_provider_credentials.sql`).
//!
//! Each value is sealed with the envelope scheme of [`super::secrets`] for the row
//! `provider-credential:<name>`, so a ciphertext moved to another name fails to open. The admin API is
//! write-only: `PUT` takes a value, `GET` lists names with a fingerprint (the first 8 hex digits of the
//! value's SHA-256: it lets an operator check which key is stored, `printf %s "$KEY" | sha256sum`,
//! without revealing any of its characters — the last four would reveal part of the key and, for
//! keys sharing a format, narrow it), `DELETE` refuses a credential the base in force references.
//!
//! A base names a credential as `${secret:<name>}`; the config server
//! ([`crate::config::render::resolve`]) substitutes the value only into what it streams to proxies.
//! Every write notifies `leaky_config_changed` in its transaction, so the config server publishes a
//! new snapshot and proxies pick up a changed key without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use utoipa::OpenApi;

use super::secrets::{MasterKeys, Sealed, Secret};
use super::{Identity, IdentityError};
use crate::apidoc::problems;
use crate::audit;
use crate::http::{ApiJson, ApiState, Page, Principal, Problem};

/// The longest value accepted (provider keys are well under this; it goes into a header).
pub const MAX_VALUE_CHARS: usize = 4096;

/// The row identity the envelope binds (associated data of both layers).
fn row_id(name: &str) -> String {
    format!("provider-credential:{name}")
}

/// `sha256:` and the first 8 hex digits of the value's SHA-256.
pub fn fingerprint(value: &str) -> String {
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    format!("sha256:{}", &digest[..8])
}

/// A stored credential as listed: never its value.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CredentialInfo {
    /// The name a base references as `${secret:<name>}`.
    pub name: String,
    /// `sha256:` + the first 8 hex digits of the value's SHA-256.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /v1/provider-credentials/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewValue {
    /// The provider's API key (1..=4096 characters, no control characters). Write-only.
    value: String,
}

impl fmt::Debug for NewValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewValue(<redacted>)")
    }
}

/// A credential name: `[a-z0-9][a-z0-9_.-]{0,63}` (the table's `CHECK`; what a `${secret:<name>}` reference may name).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && !b[0].is_ascii_uppercase()
        && b.iter().all(|c| {
            c.is_ascii_digit() || c.is_ascii_lowercase() || matches!(c, b'_' | b'.' | b'-')
        })
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(IdentityError::Field(
            "name".into(),
            "1..=64 of a-z 0-9 _ . - starting with a letter or digit".into(),
        ))
    }
}

fn check_value(value: &str) -> Result<(), IdentityError> {
    let n = value.chars().count();
    if n == 0 || n > MAX_VALUE_CHARS || value.chars().any(char::is_control) {
        return Err(IdentityError::Field(
            "value".into(),
            format!("1..={MAX_VALUE_CHARS} characters, no control characters"),
        ));
    }
    Ok(())
}

/// Seals and stores `value` under `name` (insert or replace), audited without the value, and wakes
/// the config server. Returns the listing row and whether it was created.
pub async fn store(
    pool: &PgPool,
    master: &MasterKeys,
    name: &str,
    value: &Secret<String>,
    (actor, now): (&str, DateTime<Utc>),
) -> Result<(CredentialInfo, bool), IdentityError> {
    check_name(name)?;
    check_value(value.expose())?;
    let sealed = master.seal(value.expose().as_bytes(), &row_id(name))?;
    let print = fingerprint(value.expose());
    let mut tx = crate::db::begin(pool).await?;
    let (info, created): (CredentialInfo, bool) =
        sqlx::query_as::<_, (String, String, DateTime<Utc>, DateTime<Utc>, bool)>(
            "INSERT INTO identity.provider_credentials
            (name, key_version, wrapped_dek, ciphertext, fingerprint, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (name) DO UPDATE SET key_version = $2, wrapped_dek = $3, ciphertext = $4,
            fingerprint = $5, updated_at = $6,
            revision = nextval('identity.provider_credential_revisions')
         RETURNING name, fingerprint, created_at, updated_at, (xmax = 0)",
        )
        .bind(name)
        .bind(sealed.key_version)
        .bind(&sealed.wrapped_dek)
        .bind(&sealed.ciphertext)
        .bind(&print)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map(|(name, fingerprint, created_at, updated_at, created)| {
            let info = CredentialInfo {
                name,
                fingerprint,
                created_at,
                updated_at,
            };
            (info, created)
        })?;
    let action = "provider_credential.put";
    let detail = json!({ "fingerprint": info.fingerprint, "created": created });
    record(&mut tx, actor, action, name, detail).await?;
    tx.commit().await?;
    Ok((info, created))
}

/// An audit row and the config server's wake-up, in the caller's transaction.
async fn record(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    name: &str,
    detail: serde_json::Value,
) -> Result<(), IdentityError> {
    let change = audit::Change {
        actor,
        action,
        object_kind: "provider_credential",
        object_id: name.to_owned(),
        detail,
    };
    audit::record(&mut *conn, change).await?;
    sqlx::query("SELECT pg_notify('leaky_config_changed', 'provider_credentials')")
        .execute(conn)
        .await?;
    Ok(())
}

/// Every stored credential, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<CredentialInfo>, IdentityError> {
    Ok(sqlx::query_as(
        "SELECT name, fingerprint, created_at, updated_at
         FROM identity.provider_credentials ORDER BY name",
    )
    .fetch_all(pool)
    .await?)
}

/// Deletes `name`: 404 if unknown, 409 while the base in force references it (the next snapshot could
/// not be resolved).
pub async fn remove(pool: &PgPool, name: &str, actor: &str) -> Result<(), IdentityError> {
    check_name(name)?;
    let mut tx = crate::db::begin(pool).await?;
    let in_use: bool = sqlx::query_scalar(
        "SELECT COALESCE((SELECT secrets ? $1 FROM config.versions WHERE kind = 'snapshot'
                          ORDER BY version DESC LIMIT 1), false)",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if in_use {
        return Err(IdentityError::Conflict(format!(
            "the config base in force references ${{secret:{name}}}: publish a base without it first"
        )));
    }
    let gone = sqlx::query("DELETE FROM identity.provider_credentials WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(IdentityError::NotFound(format!(
            "no provider credential {name}"
        )));
    }
    record(
        &mut tx,
        actor,
        "provider_credential.delete",
        name,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The revision of each of `names` that is stored (a missing name is absent from the map).
pub async fn revisions(
    conn: &mut PgConnection,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, revision FROM identity.provider_credentials WHERE name = ANY($1)",
    )
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The values of `names` (those stored), decrypted: for the config server's proxy streams only.
pub async fn open_all(
    conn: &mut PgConnection,
    master: &MasterKeys,
    names: impl Iterator<Item = &String>,
) -> Result<BTreeMap<String, Secret<String>>, IdentityError> {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(String, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT name, key_version, wrapped_dek, ciphertext
         FROM identity.provider_credentials WHERE name = ANY($1)",
    )
    .bind(&names)
    .fetch_all(conn)
    .await?;
    let mut out = BTreeMap::new();
    for (name, key_version, wrapped_dek, ciphertext) in rows {
        let sealed = Sealed {
            key_version,
            wrapped_dek,
            ciphertext,
        };
        let bytes = master.open(&sealed, &row_id(&name))?;
        let text = String::from_utf8(bytes.expose().clone()).map_err(|_| {
            IdentityError::Internal(format!("provider credential {name} is not UTF-8"))
        })?;
        out.insert(name, Secret::new(text));
    }
    Ok(out)
}

/// Re-wraps every credential's data key under the newest master key (compare-and-set per row, like
/// the signing keys'); the number of rows moved.
pub async fn rewrap_all(pool: &PgPool, master: &MasterKeys) -> Result<u64, IdentityError> {
    super::keys::rewrap_table(
        pool,
        master,
        "identity.provider_credentials",
        "name",
        row_id,
    )
    .await
}

#[utoipa::path(
    put, path = "/v1/provider-credentials/{name}", tag = "identity", operation_id = "put_provider_credential",
    params(("name" = String, Path, description = "The credential's name (a-z 0-9 _ . -, at most 64); a base references it as `${secret:<name>}`")),
    request_body(content = NewValue, example = json!({"value": "<the provider API key>"})),
    responses(
        (status = 201, description = "Stored (encrypted at rest). The value is never returned", body = CredentialInfo, example = json!({"name": "openai", "fingerprint": "sha256:9f86d081", "created_at": "2026-01-15T09:30:00Z", "updated_at": "2026-01-15T09:30:00Z"})),
        (status = 200, description = "Replaced; proxies get a new snapshot with the new value", body = CredentialInfo, example = json!({"name": "openai", "fingerprint": "sha256:9f86d081", "created_at": "2026-01-15T09:30:00Z", "updated_at": "2026-01-15T09:30:00Z"})),
        (status = 400, response = problems::MalformedJson),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Store or replace a provider credential (write-only).
async fn put_credential(
    principal: Principal,
    State(state): State<ApiState>,
    Extension(identity): Extension<Arc<Identity>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<NewValue>,
) -> Result<(StatusCode, Json<CredentialInfo>), Problem> {
    let value = Secret::new(body.value);
    let who = (principal.subject.as_str(), state.clock.now());
    let (info, created) = store(
        &identity.pool,
        &identity.settings.master,
        &name,
        &value,
        who,
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

#[utoipa::path(
    get, path = "/v1/provider-credentials", tag = "identity", operation_id = "list_provider_credentials",
    responses(
        (status = 200, description = "Every stored credential by name, with its fingerprint (never the value)",
         body = Page<CredentialInfo>, example = json!({"items": [{"name": "openai", "fingerprint": "sha256:9f86d081", "created_at": "2026-01-15T09:30:00Z", "updated_at": "2026-01-15T09:30:00Z"}]})),
    )
)]
/// List provider credentials (names and fingerprints).
async fn list_credentials(
    _: Principal,
    Extension(identity): Extension<Arc<Identity>>,
) -> Result<Json<Page<CredentialInfo>>, Problem> {
    let items = list(&identity.pool).await?;
    Ok(Json(Page { items, next: None }))
}

#[utoipa::path(
    delete, path = "/v1/provider-credentials/{name}", tag = "identity", operation_id = "delete_provider_credential",
    params(("name" = String, Path, description = "The credential's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 422, response = problems::Validation),
    )
)]
/// Delete a provider credential the base in force does not reference.
async fn delete_credential(
    principal: Principal,
    Extension(identity): Extension<Arc<Identity>>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    remove(&identity.pool, &name, &principal.subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(put_credential, list_credentials, delete_credential))]
struct Doc;

/// The OpenAPI paths of the vault's admin routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// `/provider-credentials*` (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/provider-credentials", get(list_credentials))
        .route(
            "/provider-credentials/{name}",
            put(put_credential).delete(delete_credential),
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_a_short_hash_prefix_and_shows_no_character_of_the_value() {
        let f = fingerprint("sk-abcdefgh12345678");
        assert!(f.starts_with("sha256:") && f.len() == 15, "{f}");
        assert!(!f.contains("5678"));
        assert_eq!(fingerprint("test"), "sha256:9f86d081");
    }

    #[test]
    fn names_and_values_are_checked_without_echoing_the_value() {
        assert!(check_name("openai").is_ok() && check_name("eu.openai-2_b").is_ok());
        for bad in ["", "OpenAI", "-x", "a b", "a}b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let e = check_value("sk-line\nbreak").unwrap_err().to_string();
        assert!(!e.contains("sk-line"), "{e}");
        assert!(check_value("").is_err());
        assert!(check_value(&"k".repeat(MAX_VALUE_CHARS + 1)).is_err());
    }

    #[test]
    fn the_request_body_never_prints_its_value() {
        let v: NewValue = serde_json::from_str(r#"{"value": "sk-secret"}"#).unwrap();
        assert!(!format!("{v:?}").contains("sk-secret"));
    }
}
