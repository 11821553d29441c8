//! API keys: `lt-<prefix>_<secret>`. The prefix (8 base62 characters) is public and unique; the
//! secret is 43 base62 characters of OS randomness (43 × log2 62 ≈ 256 bits). Only SHA-256 of the whole
//! key string is stored — the digest the proxy computes for every request — so the key is shown once,
//! at creation or rotation, and never again.
//!
//! State: `revoked` once `revoked_at` has passed, else `expired` once `expires_at` has passed, else
//! `active`. Rotation issues a new key and schedules the old one's `revoked_at` at the end of its grace
//! period ([`DEFAULT_GRACE_SECS`], at most [`MAX_GRACE_SECS`]), so both work meanwhile.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{check_name, orgs, tiers, TenancyError};
use crate::audit::{self, Change};
use crate::http::FieldError;
use crate::outbox::{self, Event};

/// Base62 characters of the public prefix.
pub const PREFIX_CHARS: usize = 8;
/// Base62 characters of the secret: 43 × log2(62) = 256.03 bits (≥ 192 required).
pub const SECRET_CHARS: usize = 43;
/// Grace period of a rotated key unless `?grace_seconds=` says otherwise: 24 h.
pub const DEFAULT_GRACE_SECS: u32 = 24 * 3600;
/// Longest grace period: 7 days.
pub const MAX_GRACE_SECS: u32 = 7 * 24 * 3600;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key's metadata as the API shows it: never the secret, never its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    #[serde(rename = "org")]
    pub org_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub tier: String,
    pub models: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub rotated_from: Option<Uuid>,
    pub grace_until: Option<DateTime<Utc>>,
    /// Admin-API roles the key carries as a bearer credential on `/v1` for its own org (empty: none,
    /// the default; a plain key is refused there).
    pub admin_roles: Vec<String>,
    /// `active`, `revoked` or `expired`, computed by the database at read time.
    pub state: String,
}

/// A key just issued: its metadata plus the full key, returned this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub meta: ApiKey,
    pub key: String,
}

/// `POST /v1/orgs/{org}/keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub tier: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Admin-API roles of the key's org to grant it (`org-admin`, `org-member`, `billing-viewer`);
    /// none by default. The caller must hold every permission of each role it grants.
    #[serde(default)]
    pub admin_roles: Vec<String>,
}

/// The admin-API roles a key may be granted: the org roles, never `platform-admin`.
pub const KEY_ADMIN_ROLES: [&str; 3] = ["org-admin", "org-member", "billing-viewer"];

/// `PATCH /v1/keys/{id}` body: what to change, at least one field. `expires_at: null` clears the expiry.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// RFC 3339; `null` clears it. A time already past expires the key now (a later PATCH can
    /// move it forward again, unlike a revocation).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Tells an absent field (`None`, via `default`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// The three states a key can be listed by.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Revoked,
    Expired,
}

impl KeyState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

const STATE_SQL: &str = "CASE WHEN revoked_at IS NOT NULL AND revoked_at <= now() THEN 'revoked'
    WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired' ELSE 'active' END";

fn columns() -> String {
    format!(
        "id, org_id, name, prefix, tier, models, expires_at, revoked_at, last_used_at, created_at, \
         rotated_from, grace_until, admin_roles, {STATE_SQL} AS state"
    )
}

fn random_base62(n: usize) -> Result<String, TenancyError> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| TenancyError::Random(e.to_string()))?;
        // 248 = 4 × 62: rejecting bytes above it keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| b < 248).take(n - out.len()) {
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

/// A fresh `(prefix, full key)`.
pub fn generate() -> Result<(String, String), TenancyError> {
    let prefix = random_base62(PREFIX_CHARS)?;
    let secret = random_base62(SECRET_CHARS)?;
    let key = format!("lt-{prefix}_{secret}");
    Ok((prefix, key))
}

/// `(prefix, secret)` of a well-formed key.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let (prefix, secret) = key.strip_prefix("lt-")?.split_once('_')?;
    let base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (prefix.len() == PREFIX_CHARS
        && secret.len() == SECRET_CHARS
        && base62(prefix)
        && base62(secret))
    .then_some((prefix, secret))
}

/// SHA-256 of the whole key string: what is stored, and what the proxy computes per request.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn validate(new: &NewKey) -> Result<String, TenancyError> {
    let mut errors = Vec::new();
    let name = match check_name("name", &new.name) {
        Ok(name) => name,
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };
    if let Err(e) = tiers::check_tier_name("tier", &new.tier) {
        errors.push(e);
    }
    if new.models.len() > 100 {
        errors.push(FieldError::new("models", "at most 100 models"));
    }
    for (i, m) in new.models.iter().enumerate() {
        if m.is_empty() || m.len() > 128 || m.chars().any(|c| c.is_control() || c.is_whitespace()) {
            errors.push(FieldError::new(
                format!("models[{i}]"),
                "must be 1 to 128 visible characters",
            ));
        } else if m.trim_end_matches('*').contains('*') || m.ends_with("**") {
            // The data plane's model patterns: an exact name, or a prefix ending in one `*`.
            errors.push(FieldError::new(
                format!("models[{i}]"),
                "a `*` may only end the pattern (a prefix match)",
            ));
        }
    }
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        errors.push(FieldError::new("expires_at", "must be in the future"));
    }
    for (i, r) in new.admin_roles.iter().enumerate() {
        if !KEY_ADMIN_ROLES.contains(&r.as_str()) {
            errors.push(FieldError::new(
                format!("admin_roles[{i}]"),
                format!("must be one of {}", KEY_ADMIN_ROLES.join(", ")),
            ));
        }
    }
    if errors.is_empty() {
        Ok(name)
    } else {
        Err(TenancyError::Invalid(errors))
    }
}

/// A key row to insert.
struct Insert<'a> {
    org: Uuid,
    name: &'a str,
    tier: &'a str,
    models: &'a [String],
    expires_at: Option<DateTime<Utc>>,
    rotated_from: Option<Uuid>,
    admin_roles: &'a [String],
}

async fn insert(conn: &mut PgConnection, row: Insert<'_>) -> Result<IssuedKey, TenancyError> {
    let (prefix, key) = generate()?;
    let sql = format!(
        "INSERT INTO tenancy.api_keys (id, org_id, name, prefix, key_sha256, tier, models, expires_at, rotated_from, admin_roles)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {}",
        columns()
    );
    let meta: ApiKey = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(row.org)
        .bind(row.name)
        .bind(&prefix)
        .bind(digest(&key).as_slice())
        .bind(row.tier)
        .bind(row.models)
        .bind(row.expires_at)
        .bind(row.rotated_from)
        .bind(row.admin_roles)
        .fetch_one(conn)
        .await?;
    Ok(IssuedKey { meta, key })
}

/// A key's metadata as its outbox events carry it: never the key itself or its hash.
fn key_data(meta: &ApiKey) -> serde_json::Value {
    serde_json::to_value(meta).unwrap_or_default()
}

/// Issues a key for org `org`.
pub async fn create(
    pool: &PgPool,
    actor: &str,
    org: Uuid,
    new: &NewKey,
) -> Result<IssuedKey, TenancyError> {
    let name = validate(new)?;
    let mut tx = crate::db::begin(pool).await?;
    orgs::lock_live(&mut tx, org).await?;
    if !tiers::lock_existing(&mut tx, &new.tier).await? {
        return Err(TenancyError::field(
            "tier",
            format!("no tier named `{}`", new.tier),
        ));
    }
    let row = Insert {
        org,
        name: &name,
        tier: &new.tier,
        models: &new.models,
        expires_at: new.expires_at,
        rotated_from: None,
        admin_roles: &new.admin_roles,
    };
    let issued = insert(&mut tx, row).await?;
    let change = Change {
        actor,
        action: "key.create",
        object_kind: "key",
        object_id: issued.meta.id.to_string(),
        detail: json!({ "org": org, "prefix": issued.meta.prefix, "tier": issued.meta.tier,
                        "admin_roles": issued.meta.admin_roles }),
    };
    audit::record(&mut tx, change).await?;
    let event = Event::tenancy("key", issued.meta.id, "key.created", key_data(&issued.meta));
    outbox::append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(issued)
}

async fn fetch(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<ApiKey, TenancyError> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT {} FROM tenancy.api_keys WHERE id = $1{suffix}",
        columns()
    );
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| TenancyError::not_found("key", id))
}

/// Key `id`'s metadata.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<ApiKey, TenancyError> {
    let mut conn = pool.acquire().await?;
    fetch(&mut conn, id, false).await
}

/// Up to `limit` keys of `org` with ids after `after`, optionally only those in `state`.
pub async fn list(
    pool: &PgPool,
    org: Uuid,
    state: Option<KeyState>,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Vec<ApiKey>, TenancyError> {
    orgs::get(pool, org).await?;
    let sql = format!(
        "SELECT {} FROM tenancy.api_keys WHERE org_id = $1 AND ($2::text IS NULL OR {STATE_SQL} = $2)
         AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
        columns()
    );
    let state = state.map(KeyState::as_str);
    Ok(sqlx::query_as(&sql)
        .bind(org)
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Keys not revoked whose `expires_at` is after `now` and at or before `until`, soonest first (at
/// most `limit`; a read for other contexts, e.g. "your key expires soon" notifications).
pub async fn expiring(
    pool: &PgPool,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ApiKey>, TenancyError> {
    let sql = format!(
        "SELECT {} FROM tenancy.api_keys WHERE revoked_at IS NULL AND expires_at > $1 AND expires_at <= $2
         ORDER BY expires_at, id LIMIT $3",
        columns()
    );
    Ok(sqlx::query_as(&sql)
        .bind(now)
        .bind(until)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// The outcome of a rotation: the new key (shown once) and the old one, valid until its `revoked_at`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rotation {
    #[serde(flatten)]
    pub new: IssuedKey,
    pub previous: ApiKey,
}

/// Replaces key `id` by a new one with the same org, name, tier, models and expiry; the old key keeps
/// working for `grace_secs` (0 revokes it now). A key already revoked, expired or rotated is a conflict.
pub async fn rotate(
    pool: &PgPool,
    actor: &str,
    id: Uuid,
    grace_secs: u32,
) -> Result<Rotation, TenancyError> {
    let mut tx = crate::db::begin(pool).await?;
    // The org's share lock before the key's row lock, in the order an org delete takes them (org, then
    // its keys): otherwise the two could deadlock, or the delete miss the key issued here.
    let org = fetch(&mut tx, id, false).await?.org_id;
    orgs::lock_live(&mut tx, org).await.map_err(|e| match e {
        TenancyError::NotFound { .. } => {
            TenancyError::Conflict(format!("key `{id}` cannot be rotated: its org is deleted"))
        }
        other => other,
    })?;
    let old = fetch(&mut tx, id, true).await?;
    if old.state != "active" || old.revoked_at.is_some() {
        let why = if old.revoked_at.is_some() && old.state == "active" {
            "already rotated"
        } else {
            old.state.as_str()
        };
        return Err(TenancyError::Conflict(format!(
            "key `{id}` cannot be rotated: {why}"
        )));
    }
    let row = Insert {
        org: old.org_id,
        name: &old.name,
        tier: &old.tier,
        models: &old.models,
        expires_at: old.expires_at,
        rotated_from: Some(id),
        // The successor keeps the admin roles: a rotation replaces the secret, not the grant.
        admin_roles: &old.admin_roles,
    };
    let new = insert(&mut tx, row).await?;
    sqlx::query(
        "UPDATE tenancy.api_keys SET revoked_at = now() + make_interval(secs => $2::double precision),
         grace_until = CASE WHEN $2 > 0 THEN now() + make_interval(secs => $2::double precision) END WHERE id = $1",
    )
    .bind(id)
    .bind(i64::from(grace_secs))
    .execute(&mut *tx)
    .await?;
    let previous = fetch(&mut tx, id, false).await?;
    let change = Change {
        actor,
        action: "key.rotate",
        object_kind: "key",
        object_id: id.to_string(),
        detail: json!({ "new_key": new.meta.id, "grace_seconds": grace_secs, "valid_until": previous.revoked_at }),
    };
    audit::record(&mut tx, change).await?;
    let data = json!({ "id": id, "org": previous.org_id, "new_key": key_data(&new.meta), "valid_until": previous.revoked_at });
    outbox::append(&mut tx, Event::tenancy("key", id, "key.rotated", data)).await?;
    tx.commit().await?;
    Ok(Rotation { new, previous })
}

/// Revokes key `id` now (also ending a rotation's grace period). Idempotent: revoking a revoked key
/// changes nothing and writes no audit row.
pub async fn revoke(pool: &PgPool, actor: &str, id: Uuid) -> Result<(), TenancyError> {
    let mut tx = crate::db::begin(pool).await?;
    let changed = sqlx::query(
        "UPDATE tenancy.api_keys SET revoked_at = now(), grace_until = NULL
         WHERE id = $1 AND (revoked_at IS NULL OR revoked_at > now())",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        fetch(&mut tx, id, false).await?;
        return Ok(());
    }
    let change = Change {
        actor,
        action: "key.revoke",
        object_kind: "key",
        object_id: id.to_string(),
        detail: json!({}),
    };
    audit::record(&mut tx, change).await?;
    let data = json!({ "id": id, "reason": "revoke" });
    outbox::append(&mut tx, Event::tenancy("key", id, "key.revoked", data)).await?;
    tx.commit().await?;
    Ok(())
}

/// Changes the expiry and/or the name of key `id`. A revoked key (or one rotated away, in its grace
/// period) is a conflict: its end is already set. The expiry reaches the proxies through the change
/// feed (the key trigger fires on `expires_at`); the name is admin metadata only.
pub async fn update(
    pool: &PgPool,
    actor: &str,
    id: Uuid,
    patch: &KeyPatch,
) -> Result<ApiKey, TenancyError> {
    let name = match &patch.name {
        Some(n) => Some(check_name("name", n)?),
        None if patch.expires_at.is_none() => {
            return Err(TenancyError::field(
                "body",
                "send at least one of `expires_at`, `name`",
            ))
        }
        None => None,
    };
    let mut tx = crate::db::begin(pool).await?;
    let old = fetch(&mut tx, id, true).await?;
    if old.revoked_at.is_some() {
        let why = if old.state == "revoked" {
            "revoked"
        } else {
            "rotated (in its grace period)"
        };
        return Err(TenancyError::Conflict(format!(
            "key `{id}` cannot be changed: {why}"
        )));
    }
    // Only the columns sent are SET: the change-feed trigger fires on any UPDATE naming
    // `expires_at`, and a rename alone must not push a key delta.
    let sql = match patch.expires_at {
        Some(_) => {
            "UPDATE tenancy.api_keys SET expires_at = $2, name = coalesce($3, name) WHERE id = $1"
        }
        None => "UPDATE tenancy.api_keys SET name = coalesce($3, name) WHERE id = $1",
    };
    sqlx::query(sql)
        .bind(id)
        .bind(patch.expires_at.flatten())
        .bind(name.as_deref())
        .execute(&mut *tx)
        .await?;
    let key = fetch(&mut tx, id, false).await?;
    let change = Change {
        actor,
        action: "key.update",
        object_kind: "key",
        object_id: id.to_string(),
        detail: json!({ "expires_at": key.expires_at, "name": key.name }),
    };
    super::audited(&mut tx, "key.updated", "key", change).await?;
    tx.commit().await?;
    Ok(key)
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    meta: ApiKey,
    key_sha256: Vec<u8>,
}

/// The metadata of `key` if it is a key this control plane issued and it is active now (the lookup the
/// config server and tests use; the proxy does the same against its snapshot). Marks it used.
pub async fn verify(pool: &PgPool, key: &str) -> Result<Option<ApiKey>, TenancyError> {
    let Some((prefix, _)) = parse(key) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {}, key_sha256 FROM tenancy.api_keys WHERE prefix = $1",
        columns()
    );
    let Some(stored): Option<Stored> = sqlx::query_as(&sql)
        .bind(prefix)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let matches: bool = digest(key)
        .as_slice()
        .ct_eq(stored.key_sha256.as_slice())
        .into();
    if !matches || stored.meta.state != "active" {
        return Ok(None);
    }
    sqlx::query("UPDATE tenancy.api_keys SET last_used_at = now() WHERE id = $1")
        .bind(stored.meta.id)
        .execute(pool)
        .await?;
    Ok(Some(stored.meta))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_carry_256_bits() {
        let (prefix, key) = generate().unwrap();
        let (p, secret) = parse(&key).unwrap();
        assert_eq!(p, prefix);
        assert_eq!(secret.len(), SECRET_CHARS);
        assert!(SECRET_CHARS as f64 * 62f64.log2() >= 256.0);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let secret = "a".repeat(SECRET_CHARS);
        assert!(parse(&format!("lt-abcdefgh_{secret}")).is_some());
        for bad in [
            format!("lt-abcdefg_{secret}"),
            format!("lt-abcdefgh_{secret}x"),
            format!("lt-abcdefgh-{secret}"),
            format!("xx-abcdefgh_{secret}"),
            format!("lt-abcdefgh_{}!", &secret[1..]),
            "lt-demo-pro".to_owned(),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn base62_characters_are_roughly_uniform() {
        let text = random_base62(62 * 200).unwrap();
        let mut counts = [0u32; 62];
        for b in text.bytes() {
            counts[ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
        }
        // Expected 200 each; a modulo bias (256 % 62) would skew the first 8 characters by ~25 %.
        assert!(
            counts.iter().all(|&c| (120..=290).contains(&c)),
            "{counts:?}"
        );
    }
}
