//! OAuth2 clients (`identity.clients`) for the `client_credentials` grant: ids that cannot be guessed,
//! secrets shown once and stored only as argon2id hashes, and what each client's tokens may carry
//! (scopes, audience, org, tier, roles, lifetime, signing algorithm).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::keys::Alg;
use super::secrets::{random_bytes, Secret};
use super::IdentityError;

/// A client as stored and listed (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Client {
    #[schema(example = "cl_5f2c0e9a4b7d41e3a8c6f1d2")]
    pub id: String,
    #[schema(example = "billing-exporter")]
    pub name: String,
    #[schema(example = json!(["admin"]))]
    pub scopes: Vec<String>,
    #[schema(example = "leaky-tokens")]
    pub audience: String,
    pub org_id: Option<Uuid>,
    pub tier: Option<String>,
    #[schema(example = json!(["platform-admin"]))]
    pub roles: Vec<String>,
    #[schema(example = 600)]
    pub token_ttl_secs: i32,
    #[schema(example = "ES256")]
    pub alg: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/identity/clients`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    #[schema(example = "billing-exporter")]
    pub name: String,
    /// Scopes the client may request; a token request without `scope` gets all of them.
    #[schema(example = json!(["admin"]))]
    pub scopes: Vec<String>,
    /// The tokens' `aud` (default: the issuer's default audience).
    pub audience: Option<String>,
    pub org_id: Option<Uuid>,
    pub tier: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Token lifetime in seconds (default: the server's, at most its maximum).
    pub token_ttl_secs: Option<i32>,
    /// Signing algorithm of its tokens: `ES256` (default), `RS256` or `EdDSA`.
    pub alg: Option<String>,
}

/// The created client with its secret, returned once (its `Debug` redacts the secret).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub client: Client,
    /// Shown only in this response; only its hash is stored.
    #[schema(example = "<returned once>")]
    pub client_secret: String,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("client", &self.client)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// A name or scope: printable ASCII without spaces (scopes are space-separated on the wire).
fn token_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

/// Checks `new` and fills its defaults; field errors name the field.
pub fn validate(
    new: &NewClient,
    default_audience: &str,
    default_ttl: i32,
    max_ttl: i32,
) -> Result<(String, i32, Alg), IdentityError> {
    let field = |f: &str, m: &str| IdentityError::Field(f.to_owned(), m.to_owned());
    if new.name.trim().is_empty() || new.name.len() > 200 {
        return Err(field("name", "must be 1..=200 characters"));
    }
    if new.scopes.is_empty() || !new.scopes.iter().all(|s| token_ok(s)) {
        return Err(field("scopes", "one or more scope tokens without spaces"));
    }
    if !new.roles.iter().all(|r| token_ok(r)) {
        return Err(field("roles", "role names without spaces"));
    }
    let audience = new
        .audience
        .clone()
        .unwrap_or_else(|| default_audience.into());
    if !token_ok(&audience) {
        return Err(field("audience", "a non-empty string without spaces"));
    }
    let ttl = new.token_ttl_secs.unwrap_or(default_ttl);
    if !(1..=max_ttl).contains(&ttl) {
        return Err(field("token_ttl_secs", &format!("must be 1..={max_ttl}")));
    }
    let alg = match new.alg.as_deref() {
        None => Alg::ES256,
        Some(a) => Alg::parse(a).ok_or_else(|| field("alg", "one of ES256, RS256, EdDSA"))?,
    };
    Ok((audience, ttl, alg))
}

/// A new client id: `cl_` and 96 random bits.
pub fn new_id() -> Result<String, IdentityError> {
    Ok(format!("cl_{}", hex::encode(random_bytes::<12>()?)))
}

/// A new client secret: 256 random bits, base64url.
pub fn new_secret() -> Result<Secret<String>, IdentityError> {
    let raw = random_bytes::<32>()?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
    ))
}

/// The argon2id PHC string of `secret` (on the blocking pool: it is slow on purpose).
pub async fn hash_secret(secret: Secret<String>) -> Result<String, IdentityError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&random_bytes::<16>()?)
            .map_err(|e| IdentityError::Internal(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(secret.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| IdentityError::Internal(format!("hashing a client secret: {e}")))
    })
    .await
    .map_err(|e| IdentityError::Internal(format!("hash task: {e}")))?
}

/// Whether `presented` matches the PHC string `hash` (constant time inside argon2). A malformed
/// stored hash verifies nothing.
pub async fn verify_secret(hash: String, presented: Secret<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(presented.expose().as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Inserts a client on `conn` with `id` and the secret's hash.
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    new: &NewClient,
    filled: (String, i32, Alg),
    secret_hash: &str,
    now: DateTime<Utc>,
) -> Result<Client, IdentityError> {
    let (audience, ttl, alg) = filled;
    sqlx::query_as(
        "INSERT INTO identity.clients (id, name, secret_hash, scopes, audience, org_id, tier, roles,
             token_ttl_secs, alg, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO NOTHING
         RETURNING id, name, scopes, audience, org_id, tier, roles, token_ttl_secs, alg, created_at",
    )
    .bind(id)
    .bind(new.name.trim())
    .bind(secret_hash)
    .bind(&new.scopes)
    .bind(audience)
    .bind(new.org_id)
    .bind(&new.tier)
    .bind(&new.roles)
    .bind(ttl)
    .bind(alg.as_str())
    .bind(now)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| IdentityError::Conflict(format!("client {id} exists")))
}

/// Every client, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Client>, IdentityError> {
    Ok(sqlx::query_as(
        "SELECT id, name, scopes, audience, org_id, tier, roles, token_ttl_secs, alg, created_at
         FROM identity.clients ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// One client and its secret hash.
pub async fn find(pool: &PgPool, id: &str) -> Result<Option<(Client, String)>, IdentityError> {
    let row: Option<ClientWithHash> = sqlx::query_as(
        "SELECT id, name, scopes, audience, org_id, tier, roles, token_ttl_secs, alg, created_at,
                secret_hash
         FROM identity.clients WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.client, r.secret_hash)))
}

#[derive(sqlx::FromRow)]
struct ClientWithHash {
    #[sqlx(flatten)]
    client: Client,
    secret_hash: String,
}

/// Deletes client `id` on `conn`; whether it existed.
pub async fn delete(conn: &mut PgConnection, id: &str) -> Result<bool, IdentityError> {
    let done = sqlx::query("DELETE FROM identity.clients WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn new(scopes: &[&str]) -> NewClient {
        NewClient {
            name: "svc".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audience: None,
            org_id: None,
            tier: None,
            roles: vec![],
            token_ttl_secs: None,
            alg: None,
        }
    }

    #[test]
    fn validation_fills_defaults_and_names_bad_fields() {
        let (aud, ttl, alg) = validate(&new(&["admin"]), "leaky-tokens", 600, 3600).unwrap();
        assert_eq!((aud.as_str(), ttl, alg), ("leaky-tokens", 600, Alg::ES256));
        let bad = |c: NewClient| match validate(&c, "aud", 600, 3600) {
            Err(IdentityError::Field(f, _)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(new(&[])), "scopes");
        assert_eq!(bad(new(&["a b"])), "scopes");
        let mut c = new(&["x"]);
        c.token_ttl_secs = Some(7200);
        assert_eq!(bad(c), "token_ttl_secs");
        let mut c = new(&["x"]);
        c.alg = Some("HS256".into());
        assert_eq!(bad(c), "alg");
    }

    #[tokio::test]
    async fn secrets_hash_with_argon2id_and_verify() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.expose().len(), 43);
        let hash = hash_secret(secret.clone()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_secret(hash.clone(), secret).await);
        assert!(!verify_secret(hash, Secret::new("wrong".into())).await);
        assert!(!verify_secret("not a hash".into(), Secret::new("x".into())).await);
    }
}
