//! The people grants of `POST /oauth2/token`: `authorization_code` with PKCE (RFC 6749 §4.1, RFC 7636,
//! S256 only) and `refresh_token` with rotation and reuse detection.
//!
//! **Families.** Every code redemption starts a token *family* (a random id): the access tokens'
//! `jti`s and the refresh tokens issued from that code and from its refreshes all belong to it, and
//! the family is what gets revoked when something is replayed:
//! - a code is single use (`SET NX` on its digest, across replicas). A second redemption fails AND
//!   revokes the family of the first one (RFC 6749 §4.1.2: every token issued from that code);
//! - a refresh token is single use too: each refresh rotates it (the old one dies, a new one of the
//!   same family is issued). Presenting a used one again means it leaked: the whole family is revoked,
//!   and its access tokens' `jti`s go to the revoked set (Redis, as for RFC 7009), so introspection,
//!   the admin API and `userinfo` refuse them at once.
//!
//! Codes and refresh tokens are opaque 256-bit random values stored only as SHA-256 digests in Redis
//! ([`super::sessions`]); their expiry is checked on the injected clock. A refresh token is issued
//! when the client is registered for the `refresh_token` grant; a family lives at most
//! `refresh_ttl` from the login, however often it is refreshed.

use std::collections::HashMap;

use axum::http::StatusCode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::clients::Client;
use super::oauth::{self, OAuthError};
use super::sessions::{digest, random_id};
use super::users::{self, Person};
use super::{oidc, Identity, IdentityError};

/// How long after its expiry a redeemed code is remembered, so that a late replay still revokes
/// what the first redemption got.
const REUSE_MEMORY_SECS: i64 = 600;

/// An authorization code's data (Redis, under the code's digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub user: Uuid,
    pub org: Uuid,
    pub scope: Vec<String>,
    pub nonce: Option<String>,
    pub auth_time: i64,
    /// BASE64URL(SHA-256(code_verifier)).
    pub code_challenge: String,
    pub exp: i64,
}

/// A refresh token's data (Redis, under the token's digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    family: String,
    client_id: String,
    user: Uuid,
    org: Uuid,
    scope: Vec<String>,
    auth_time: i64,
    /// The family's end (the login + `refresh_ttl`); rotation does not extend it.
    exp: i64,
}

fn secs(d: chrono::Duration) -> u64 {
    u64::try_from(d.num_seconds()).unwrap_or(1).max(1)
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn unauthorized_client(grant: &str) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        format!("this client is not registered for {grant}"),
    )
}

/// BASE64URL(SHA-256(`verifier`)), the S256 code challenge (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A code verifier or S256 challenge: 43..=128 unreserved characters (RFC 7636 §4.1).
pub fn pkce_value_ok(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Stores a new code for `record`; returns the code to hand out.
pub async fn new_code(identity: &Identity, record: &CodeRecord) -> Result<String, IdentityError> {
    let code = random_id()?;
    let ttl = secs(identity.settings.code_ttl) + secs(chrono::Duration::seconds(REUSE_MEMORY_SECS));
    identity
        .sessions()?
        .put("code", &digest(&code), record, ttl)
        .await?;
    Ok(code)
}

/// `grant_type=authorization_code`.
pub(crate) async fn redeem_code(
    identity: &Identity,
    client: &Client,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    if !client.allows("authorization_code") {
        return Err(unauthorized_client("authorization_code"));
    }
    let code = form
        .get("code")
        .ok_or_else(|| OAuthError::request("`code` is required"))?;
    let store = identity.sessions()?;
    let key = digest(code);
    let Some(rec) = store.get::<CodeRecord>("code", &key).await? else {
        return Err(invalid_grant("unknown or expired code"));
    };
    // Single use, decided before anything else: whoever comes second fails and revokes the first's
    // tokens, whatever they present.
    let family = random_id()?;
    // As long as the code itself is remembered: a replay after that finds no code at all.
    let remember =
        secs(identity.settings.code_ttl) + secs(chrono::Duration::seconds(REUSE_MEMORY_SECS));
    if !store.claim("code-used", &key, &family, remember).await? {
        if let Some(first) = store.raw("code-used", &key).await? {
            revoke_family(identity, &first).await?;
        }
        tracing::warn!(client_id = %client.id, "identity: authorization code replayed; its tokens are revoked");
        return Err(invalid_grant("the code was already used"));
    }
    check_code(identity, client, &rec, form)?;
    let person = person(identity, rec.org, rec.user).await?;
    let now = identity.clock.now().timestamp();
    let issued = Issue {
        family: &family,
        scope: &rec.scope,
        auth_time: rec.auth_time,
        nonce: rec.nonce.as_deref(),
        family_exp: now + identity.settings.refresh_ttl.num_seconds(),
        id_token: true,
    };
    tokens(identity, client, &person, issued).await
}

/// Everything a redemption must match: the client, the redirect URI, the clock, the PKCE verifier.
fn check_code(
    identity: &Identity,
    client: &Client,
    rec: &CodeRecord,
    form: &HashMap<String, String>,
) -> Result<(), OAuthError> {
    if rec.client_id != client.id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if form.get("redirect_uri") != Some(&rec.redirect_uri) {
        return Err(invalid_grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    if rec.exp <= identity.clock.now().timestamp() {
        return Err(invalid_grant("the code expired"));
    }
    let verifier = form
        .get("code_verifier")
        .ok_or_else(|| OAuthError::request("`code_verifier` is required (PKCE)"))?;
    let matches = pkce_value_ok(verifier)
        && bool::from(
            s256(verifier)
                .as_bytes()
                .ct_eq(rec.code_challenge.as_bytes()),
        );
    if !matches {
        return Err(invalid_grant("PKCE verification failed"));
    }
    Ok(())
}

/// The person a code or refresh token stands for; one deleted meanwhile is `invalid_grant`.
async fn person(identity: &Identity, org: Uuid, user: Uuid) -> Result<Person, OAuthError> {
    match users::person(&identity.pool, org, user).await {
        Ok(p) => Ok(p),
        Err(IdentityError::NotFound(_)) => Err(invalid_grant("the user no longer exists")),
        Err(e) => Err(e.into()),
    }
}

/// What one issue of tokens to a person carries.
struct Issue<'a> {
    family: &'a str,
    scope: &'a [String],
    auth_time: i64,
    nonce: Option<&'a str>,
    family_exp: i64,
    id_token: bool,
}

/// An access token (its `jti` recorded in the family first, so a revocation racing this issue still
/// catches it), a refresh token if the client may refresh, an ID token for `openid`.
async fn tokens(
    identity: &Identity,
    client: &Client,
    person: &Person,
    issue: Issue<'_>,
) -> Result<Value, OAuthError> {
    let store = identity.sessions()?;
    let jti = Uuid::new_v4().to_string();
    let family_ttl = secs(identity.settings.refresh_ttl);
    store
        .add("family-jtis", issue.family, &jti, family_ttl)
        .await?;
    let (access, ttl) =
        oauth::issue_access(identity, client, Some(person), issue.scope, jti).await?;
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": issue.scope.join(" "),
    });
    if client.allows("refresh_token") {
        let rec = RefreshRecord {
            family: issue.family.to_owned(),
            client_id: client.id.clone(),
            user: person.id,
            org: person.org,
            scope: issue.scope.to_vec(),
            auth_time: issue.auth_time,
            exp: issue.family_exp,
        };
        let refresh = random_id()?;
        store
            .put("refresh", &digest(&refresh), &rec, family_ttl)
            .await?;
        body["refresh_token"] = refresh.into();
    }
    if issue.id_token && issue.scope.iter().any(|s| s == "openid") {
        let moment = oidc::Login {
            auth_time: issue.auth_time,
            nonce: issue.nonce,
        };
        let id = oidc::id_token(identity, client, person, issue.scope, moment, &access).await?;
        body["id_token"] = id.into();
    }
    Ok(body)
}

/// `grant_type=refresh_token`: rotation, and reuse revokes the family.
pub(crate) async fn refresh(
    identity: &Identity,
    client: &Client,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    if !client.allows("refresh_token") {
        return Err(unauthorized_client("refresh_token"));
    }
    let token = form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::request("`refresh_token` is required"))?;
    let store = identity.sessions()?;
    let key = digest(token);
    let Some(rec) = store.get::<RefreshRecord>("refresh", &key).await? else {
        return Err(invalid_grant("unknown or expired refresh token"));
    };
    if rec.client_id != client.id {
        return Err(invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    let now = identity.clock.now().timestamp();
    let remaining = u64::try_from(rec.exp - now).unwrap_or(1);
    if !store.claim("refresh-used", &key, "1", remaining).await? {
        revoke_family(identity, &rec.family).await?;
        tracing::warn!(client_id = %client.id, "identity: refresh token replayed; its family is revoked");
        return Err(invalid_grant("the refresh token was already used"));
    }
    if store.raw("family-revoked", &rec.family).await?.is_some() {
        return Err(invalid_grant("the refresh token was revoked"));
    }
    if rec.exp <= now {
        return Err(invalid_grant("the refresh token expired"));
    }
    let scope = narrowed(&rec.scope, form.get("scope"))?;
    let person = person(identity, rec.org, rec.user).await?;
    let issued = Issue {
        family: &rec.family,
        scope: &scope,
        auth_time: rec.auth_time,
        nonce: None,
        family_exp: rec.exp,
        id_token: false,
    };
    tokens(identity, client, &person, issued).await
}

/// The scope of a refresh: the original, or a subset of it (RFC 6749 §6).
fn narrowed(original: &[String], requested: Option<&String>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(original.to_vec());
    };
    let scope: Vec<String> = requested
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if scope.is_empty() || !scope.iter().all(|s| original.contains(s)) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "a refresh may only narrow the original scope",
        ));
    }
    Ok(scope)
}

/// Revokes family `family`: its refresh tokens stop working and every access token issued in it is
/// revoked until it expires.
pub(crate) async fn revoke_family(identity: &Identity, family: &str) -> Result<(), IdentityError> {
    let store = identity.sessions()?;
    store
        .put(
            "family-revoked",
            family,
            &1,
            secs(identity.settings.refresh_ttl),
        )
        .await?;
    let revocations = identity.revocations()?;
    let ttl = secs(identity.settings.policy.max_token_ttl);
    for jti in store.members("family-jtis", family).await? {
        revocations.revoke(&jti, ttl).await?;
    }
    Ok(())
}

/// RFC 7009 for a refresh token of `client`: revokes its family. `None` if it is no refresh token;
/// `Some(false)` if it belongs to another client.
pub(crate) async fn revoke_refresh(
    identity: &Identity,
    client: &Client,
    token: &str,
) -> Result<Option<bool>, IdentityError> {
    let Some(store) = identity.sessions.as_ref() else {
        return Ok(None);
    };
    let Some(rec) = store
        .get::<RefreshRecord>("refresh", &digest(token))
        .await?
    else {
        return Ok(None);
    };
    if rec.client_id != client.id {
        return Ok(Some(false));
    }
    revoke_family(identity, &rec.family).await?;
    Ok(Some(true))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(pkce_value_ok(verifier));
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn pkce_values_are_43_to_128_unreserved_characters() {
        assert!(!pkce_value_ok("short"));
        assert!(!pkce_value_ok(&"a".repeat(129)));
        assert!(!pkce_value_ok(&format!("{}+", "a".repeat(42))));
        assert!(pkce_value_ok(&"a~._-".repeat(10)));
    }

    #[test]
    fn a_refresh_may_only_narrow_the_scope() {
        let original = vec!["openid".to_owned(), "admin".to_owned()];
        assert_eq!(narrowed(&original, None).unwrap(), original);
        let admin = "admin".to_owned();
        assert_eq!(narrowed(&original, Some(&admin)).unwrap(), vec!["admin"]);
        assert!(narrowed(&original, Some(&"admin email".to_owned())).is_err());
        assert!(narrowed(&original, Some(&" ".to_owned())).is_err());
    }
}
