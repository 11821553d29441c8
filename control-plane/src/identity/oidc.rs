//! OpenID Connect on top of the code flow: the **ID token** (OIDC Core §2, §3.1.3.6) issued with the
//! access token when the `openid` scope was granted, and **`/oauth2/userinfo`** (§5.3).
//!
//! The ID token is signed like the client's access tokens (its algorithm, the active key, `typ: JWT`)
//! and carries `iss`, `sub` (the user's id), `aud` = the client id, `azp`, `exp`, `iat`, `auth_time`,
//! the request's `nonce` echoed, `at_hash` (the left half of the access token's hash: SHA-256 for
//! ES256/RS256, SHA-512 for EdDSA/Ed25519), and the person's `email`/`name` for the `email`/`profile`
//! scopes plus `org` and `roles`.
//!
//! `userinfo` takes a bearer access token of this server (signature, `iss`, expiry on the injected
//! clock, not revoked) that was granted `openid` to a person, and answers `sub`, `email`, `name`,
//! `org`, `roles`. Its errors follow RFC 6750 §3 (`WWW-Authenticate: Bearer error="invalid_token"`).

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use uuid::Uuid;

use super::clients::Client;
use super::keys::Alg;
use super::oauth::{self, OAuthError};
use super::users::{self, Person};
use super::{Identity, IdentityError};

/// When and how the person logged in.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    pub auth_time: i64,
    pub nonce: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    at_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    org: String,
    roles: &'a [String],
}

/// `at_hash` of `access_token` for a token signed with `alg` (OIDC Core §3.1.3.6).
pub fn at_hash(alg: Alg, access_token: &str) -> String {
    let full = match alg {
        Alg::ES256 | Alg::RS256 => Sha256::digest(access_token.as_bytes()).to_vec(),
        Alg::EdDSA => Sha512::digest(access_token.as_bytes()).to_vec(),
    };
    let half = &full[..full.len() / 2];
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(half)
}

/// The ID token for `person` logging in at `client` with `scope`, next to `access_token`.
pub(crate) async fn id_token(
    identity: &Identity,
    client: &Client,
    person: &Person,
    scope: &[String],
    login: Login<'_>,
    access_token: &str,
) -> Result<String, OAuthError> {
    let alg = Alg::parse(&client.alg).unwrap_or(Alg::ES256);
    let now = identity.clock.now().timestamp();
    let has = |s: &str| scope.iter().any(|x| x == s);
    let claims = IdClaims {
        iss: &identity.settings.issuer,
        sub: person.id.to_string(),
        aud: &client.id,
        azp: &client.id,
        exp: now + i64::from(client.token_ttl_secs),
        iat: now,
        auth_time: login.auth_time,
        nonce: login.nonce,
        at_hash: at_hash(alg, access_token),
        email: has("email").then_some(person.email.as_str()),
        name: has("profile").then_some(person.name.as_str()),
        org: person.org.to_string(),
        roles: &person.roles,
    };
    Ok(oauth::sign(identity, alg, "JWT", &claims).await?)
}

/// An RFC 6750 error of `userinfo`.
fn bearer_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let challenge = format!("Bearer error=\"{error}\", error_description=\"{description}\"");
    let mut res = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// `GET`/`POST /oauth2/userinfo`.
pub(crate) async fn userinfo(
    Extension(identity): Extension<Arc<Identity>>,
    headers: HeaderMap,
) -> Response {
    let invalid = || {
        bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is invalid",
        )
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return bearer_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "a bearer access token is required",
        );
    };
    match lookup(&identity, token.trim()).await {
        Ok(Some(person)) => {
            let body = json!({
                "sub": person.id, "email": person.email, "name": person.name,
                "org": person.org, "roles": person.roles,
            });
            (oauth::no_store(), Json(body)).into_response()
        }
        Ok(None) => invalid(),
        Err(IdentityError::Unavailable(m)) => bearer_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            &m,
        ),
        Err(e) => OAuthError::from(e).into_response(),
    }
}

/// The person a valid, unrevoked `openid` access token was issued to.
async fn lookup(identity: &Identity, token: &str) -> Result<Option<Person>, IdentityError> {
    let Some(claims) = oauth::verify(identity, token, identity.clock.now()).await? else {
        return Ok(None);
    };
    if !claims.scope.split(' ').any(|s| s == "openid") {
        return Ok(None);
    }
    if identity.revocations()?.is_revoked(&claims.jti).await? {
        return Ok(None);
    }
    let (Ok(user), Some(Ok(org))) = (
        Uuid::parse_str(&claims.sub),
        claims.org.as_deref().map(Uuid::parse_str),
    ) else {
        return Ok(None);
    };
    match users::person(&identity.pool, org, user).await {
        Ok(p) => Ok(Some(p)),
        Err(IdentityError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_hash_base64url() {
        // 16 bytes of SHA-256 → 22 characters; 32 bytes of SHA-512 → 43.
        assert_eq!(at_hash(Alg::ES256, "token").len(), 22);
        assert_eq!(at_hash(Alg::RS256, "token"), at_hash(Alg::ES256, "token"));
        assert_eq!(at_hash(Alg::EdDSA, "token").len(), 43);
        assert_ne!(at_hash(Alg::ES256, "token"), at_hash(Alg::ES256, "other"));
    }
}
