//! OAuth2 clients (`identity.clients`): ids that cannot be guessed, secrets shown once and stored only
//! as argon2id hashes, and what each client's tokens may carry (scopes, audience, org, tier, roles,
//! lifetime, signing algorithm).
//!
//! How a client authenticates (`auth_method`): `client_secret` (Basic or in the body), `private_key_jwt`
//! (a signed assertion checked against the public JWKS it registered; no secret exists) or `none` (a
//! public client such as a CLI or a single-page app: no secret, so it may only use
//! `authorization_code` with PKCE and `refresh_token`). Which grants it may use (`grant_types`) and the
//! exact redirect URIs of `authorization_code` are registered with it.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    /// The exact redirect URIs `authorization_code` may send codes to.
    #[schema(example = json!(["https://app.example.com/callback"]))]
    pub redirect_uris: Vec<String>,
    /// `client_credentials`, `authorization_code`, `refresh_token`.
    #[schema(example = json!(["client_credentials"]))]
    pub grant_types: Vec<String>,
    /// `client_secret`, `private_key_jwt` or `none` (a public client).
    #[schema(example = "client_secret")]
    pub auth_method: String,
    /// The public JWKS of a `private_key_jwt` client.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
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
    /// Exact redirect URIs (required with `authorization_code`): absolute, `https`, or `http` on a
    /// loopback host; no fragment.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Grants it may use (default `["client_credentials"]`).
    pub grant_types: Option<Vec<String>>,
    /// `client_secret` (default), `private_key_jwt` (give `jwks`) or `none` (public client).
    pub auth_method: Option<String>,
    /// The public JWKS (`{"keys": [...]}`) of a `private_key_jwt` client: ES256, RS256 or EdDSA keys.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
}

/// A validated [`NewClient`] with its defaults filled in.
#[derive(Debug, Clone)]
pub struct Filled {
    pub audience: String,
    pub ttl: i32,
    pub alg: Alg,
    pub grant_types: Vec<String>,
    pub auth_method: String,
}

/// The grants a client may be registered for.
pub const GRANTS: [&str; 3] = ["client_credentials", "authorization_code", "refresh_token"];
/// The client authentication methods.
pub const METHODS: [&str; 3] = ["client_secret", "private_key_jwt", "none"];

/// The created client with its secret, returned once (its `Debug` redacts the secret).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub client: Client,
    /// Shown only in this response; only its hash is stored. Absent for `private_key_jwt` and public
    /// clients, which have none.
    #[schema(example = "<returned once>")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
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
) -> Result<Filled, IdentityError> {
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
    let (grant_types, auth_method) = validate_flows(new)?;
    Ok(Filled {
        audience,
        ttl,
        alg,
        grant_types,
        auth_method,
    })
}

/// The grants, authentication method, redirect URIs and JWKS of `new`, checked together.
fn validate_flows(new: &NewClient) -> Result<(Vec<String>, String), IdentityError> {
    let field = |f: &str, m: &str| IdentityError::Field(f.to_owned(), m.to_owned());
    let grants = new
        .grant_types
        .clone()
        .unwrap_or_else(|| vec!["client_credentials".into()]);
    if grants.is_empty() || !grants.iter().all(|g| GRANTS.contains(&g.as_str())) {
        return Err(field(
            "grant_types",
            "one or more of client_credentials, authorization_code, refresh_token",
        ));
    }
    let method = new
        .auth_method
        .clone()
        .unwrap_or_else(|| "client_secret".into());
    if !METHODS.contains(&method.as_str()) {
        return Err(field(
            "auth_method",
            "one of client_secret, private_key_jwt, none",
        ));
    }
    let has = |g: &str| grants.iter().any(|x| x == g);
    if method == "none" && has("client_credentials") {
        return Err(field(
            "grant_types",
            "a public client cannot use client_credentials",
        ));
    }
    if has("authorization_code") == new.redirect_uris.is_empty() {
        return Err(field(
            "redirect_uris",
            "required with authorization_code, and only with it",
        ));
    }
    if new.redirect_uris.len() > 10 || !new.redirect_uris.iter().all(|u| redirect_uri_ok(u)) {
        return Err(field(
            "redirect_uris",
            "absolute https URIs (http only on a loopback host), no fragment",
        ));
    }
    match (method.as_str(), &new.jwks) {
        ("private_key_jwt", Some(jwks)) if super::assertion::parse_jwks(jwks).is_some() => {}
        ("private_key_jwt", _) => {
            return Err(field(
                "jwks",
                "a JWKS with ES256, RS256 or EdDSA public keys",
            ))
        }
        (_, Some(_)) => return Err(field("jwks", "only for private_key_jwt")),
        _ => {}
    }
    Ok((grants, method))
}

/// A redirect URI clients may register: absolute, no fragment, `https` or loopback `http`.
pub fn redirect_uri_ok(uri: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(uri) else {
        return false;
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    uri.len() <= 2000
        && url.fragment().is_none()
        && url.username().is_empty()
        && (url.scheme() == "https" || (url.scheme() == "http" && loopback))
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

/// Client secrets proven recently: the SHA-256 of (stored PHC string, presented secret), kept a few
/// minutes. A client secret is 256 random bits, so argon2id's cost buys nothing against guessing it;
/// paying ~20 ms of CPU on every token request would cap the token endpoint at a few dozen per second
/// per core. Only successes are remembered, so a wrong secret always pays the full verification (and
/// the failure limiter). The stored hash is part of the key: a rotated or deleted secret stops
/// matching at once.
static VERIFIED_SECRETS: std::sync::LazyLock<moka::sync::Cache<[u8; 32], ()>> =
    std::sync::LazyLock::new(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(300))
            .build()
    });

/// [`verify_secret`] for a client secret, remembering successes (see [`VERIFIED_SECRETS`]).
pub async fn verify_client_secret(hash: String, presented: Secret<String>) -> bool {
    remembered(&VERIFIED_SECRETS, hash, presented, verify_secret).await
}

/// `verify(hash, presented)`, unless `memory` holds this exact pair's success.
async fn remembered<F, Fut>(
    memory: &moka::sync::Cache<[u8; 32], ()>,
    hash: String,
    presented: Secret<String>,
    verify: F,
) -> bool
where
    F: FnOnce(String, Secret<String>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let proof: [u8; 32] = {
        let mut h = Sha256::new();
        h.update(hash.as_bytes());
        h.update([0]);
        h.update(presented.expose().as_bytes());
        h.finalize().into()
    };
    if memory.contains_key(&proof) {
        return true;
    }
    let ok = verify(hash, presented).await;
    if ok {
        memory.insert(proof, ());
    }
    ok
}

const COLUMNS: &str = "id, name, scopes, audience, org_id, tier, roles, token_ttl_secs, alg,
    created_at, redirect_uris, grant_types, auth_method, jwks";

/// Inserts a client on `conn` with `id` and the secret's hash (none for clients without a secret).
pub async fn insert(
    conn: &mut PgConnection,
    id: &str,
    new: &NewClient,
    filled: Filled,
    secret_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Client, IdentityError> {
    let sql = format!(
        "INSERT INTO identity.clients (id, name, secret_hash, scopes, audience, org_id, tier, roles,
             token_ttl_secs, alg, created_at, redirect_uris, grant_types, auth_method, jwks)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (id) DO NOTHING
         RETURNING {COLUMNS}"
    );
    sqlx::query_as(&sql)
        .bind(id)
        .bind(new.name.trim())
        .bind(secret_hash)
        .bind(&new.scopes)
        .bind(filled.audience)
        .bind(new.org_id)
        .bind(&new.tier)
        .bind(&new.roles)
        .bind(filled.ttl)
        .bind(filled.alg.as_str())
        .bind(now)
        .bind(&new.redirect_uris)
        .bind(&filled.grant_types)
        .bind(&filled.auth_method)
        .bind(&new.jwks)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| IdentityError::Conflict(format!("client {id} exists")))
}

/// Every client, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Client>, IdentityError> {
    let sql = format!("SELECT {COLUMNS} FROM identity.clients ORDER BY created_at, id");
    Ok(sqlx::query_as(&sql).fetch_all(pool).await?)
}

/// One client and its secret hash.
pub async fn find(
    pool: &PgPool,
    id: &str,
) -> Result<Option<(Client, Option<String>)>, IdentityError> {
    let sql = format!("SELECT {COLUMNS}, secret_hash FROM identity.clients WHERE id = $1");
    let row: Option<ClientWithHash> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    Ok(row.map(|r| (r.client, r.secret_hash)))
}

#[derive(sqlx::FromRow)]
struct ClientWithHash {
    #[sqlx(flatten)]
    client: Client,
    secret_hash: Option<String>,
}

impl Client {
    /// Whether the client is registered for `grant`.
    pub fn allows(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }
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
            redirect_uris: vec![],
            grant_types: None,
            auth_method: None,
            jwks: None,
        }
    }

    #[test]
    fn validation_fills_defaults_and_names_bad_fields() {
        let f = validate(&new(&["admin"]), "leaky-tokens", 600, 3600).unwrap();
        assert_eq!(
            (f.audience.as_str(), f.ttl, f.alg),
            ("leaky-tokens", 600, Alg::ES256)
        );
        assert_eq!(f.grant_types, vec!["client_credentials"]);
        assert_eq!(f.auth_method, "client_secret");
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
        let mut c = new(&["openid"]);
        c.grant_types = Some(vec!["authorization_code".into()]);
        assert_eq!(bad(c), "redirect_uris");
        let mut c = new(&["openid"]);
        c.auth_method = Some("none".into());
        assert_eq!(bad(c), "grant_types");
        let mut c = new(&["openid"]);
        c.auth_method = Some("private_key_jwt".into());
        assert_eq!(bad(c), "jwks");
        let mut c = new(&["openid"]);
        c.grant_types = Some(vec!["password".into()]);
        assert_eq!(bad(c), "grant_types");
    }

    #[test]
    fn redirect_uris_are_absolute_https_or_loopback_http_without_fragment() {
        assert!(redirect_uri_ok("https://app.example.com/cb"));
        assert!(redirect_uri_ok("http://127.0.0.1:8765/callback"));
        assert!(redirect_uri_ok("http://localhost/cb"));
        assert!(!redirect_uri_ok("http://app.example.com/cb"));
        assert!(!redirect_uri_ok("https://app.example.com/cb#x"));
        assert!(!redirect_uri_ok("/cb"));
        assert!(!redirect_uri_ok("https://user@app.example.com/cb"));
        assert!(!redirect_uri_ok("javascript:alert(1)"));
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

    #[tokio::test]
    async fn client_secret_successes_are_remembered_per_stored_hash_failures_never() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let memory = moka::sync::Cache::new(100);
        let calls = AtomicUsize::new(0);
        let check = |hash: &str, secret: &str| {
            let counted = |h: String, s: Secret<String>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { h == format!("hash-of-{}", s.expose()) }
            };
            remembered(&memory, hash.into(), Secret::new(secret.into()), counted)
        };
        // Wrong secrets pay the verification every time.
        assert!(!check("hash-of-right", "wrong").await);
        assert!(!check("hash-of-right", "wrong").await);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A success is verified once, then remembered.
        assert!(check("hash-of-right", "right").await);
        assert!(check("hash-of-right", "right").await);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Another stored hash (a rotated secret) is verified afresh and may refuse the old secret.
        assert!(!check("hash-of-rotated", "right").await);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // The real argon2id path agrees.
        let secret = new_secret().unwrap();
        let hash = hash_secret(secret.clone()).await.unwrap();
        assert!(verify_client_secret(hash.clone(), secret.clone()).await);
        assert!(verify_client_secret(hash, secret).await);
    }
}
