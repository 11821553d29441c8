//! The OAuth2 protocol endpoints: discovery (RFC 8414 and OIDC's document, listing only what exists),
//! the JWKS, `POST /oauth2/token` (`client_credentials`, RFC 6749 §4.4, here; `authorization_code`
//! and `refresh_token` in [`super::grants`]), introspection (RFC 7662) and revocation (RFC 7009),
//! both requiring client authentication; the routes of [`super::authorize`] and [`super::oidc`].
//!
//! Client authentication: `client_secret_basic`, `client_secret_post`, `private_key_jwt`
//! ([`super::assertion`]) or, for public clients at the token endpoint only, `none` (the client id
//! alone; such clients can only use PKCE-bound codes and their refresh tokens).
//!
//! Errors are RFC 6749 §5.2 JSON (`{"error", "error_description"}`), not problem+json: OAuth2
//! clients parse these. `invalid_client` is a 401 with `WWW-Authenticate: Basic`. Failed client
//! authentications are counted per client id and per peer IP in fixed windows on the injected clock;
//! past [`MAX_FAILURES`] the endpoint answers 429 until the window ends. With Redis the counters are
//! shared by every replica (an attacker cannot multiply the budget by spreading over replicas); while
//! Redis is unreachable, and without it, each replica counts in memory rather than refusing everyone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::clients::{self, Client};
use super::keys::{self, Alg};
use super::secrets::Secret;
use super::users::Person;
use super::{assertion, authorize, grants, oidc, Identity, IdentityError};
use crate::http::{ApiState, Principal};

/// Failed client authentications per client id or IP allowed in one [`WINDOW_SECS`].
pub const MAX_FAILURES: u32 = 10;
pub const WINDOW_SECS: i64 = 300;
/// Largest token accepted for introspection or revocation.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The access token's claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The admin-API caller a verified token stands for: its org and its role names (RBAC ignores names it
/// does not know, never maps them to something).
pub fn principal(claims: &Claims) -> Principal {
    // A person's token names the user in `sub` and the client it logged in through in `client_id`.
    let kind = if claims.sub == claims.client_id {
        "client"
    } else {
        "user"
    };
    Principal {
        subject: format!("{kind}:{}", claims.sub),
        scopes: claims.scope.split(' ').map(str::to_owned).collect(),
        org: claims.org.clone(),
        roles: claims.roles.clone(),
    }
}

/// The admin-API caller `token` stands for, if this server issued it for the admin audience, its
/// signature, `iss`, `exp` and `nbf` hold (at the injected clock) and it is not revoked. A revocation
/// store that cannot answer fails closed (503), as introspection does.
pub async fn admin_principal(
    identity: &Identity,
    token: &str,
) -> Result<Option<Principal>, IdentityError> {
    let Some(claims) = verify(identity, token, identity.clock.now()).await? else {
        return Ok(None);
    };
    if claims.aud != identity.settings.admin_audience {
        return Ok(None);
    }
    if let Some(r) = &identity.revoked {
        if r.is_revoked(&claims.jti).await? {
            return Ok(None);
        }
    }
    Ok(Some(principal(&claims)))
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<i64>,
}

impl OAuthError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    pub(crate) fn request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }
}

impl From<IdentityError> for OAuthError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Unavailable(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                m,
            ),
            e => {
                tracing::error!(error = %e, "identity: oauth endpoint failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        let mut res = (self.status, no_store(), Json(body)).into_response();
        if self.error == "invalid_client" {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"leaky-tokens\""),
            );
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

pub(crate) fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// Failed client authentications per key (`client:<id>`, `ip:<addr>`) in fixed windows.
#[derive(Default)]
pub(crate) struct FailureLimiter {
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

/// The Redis counter kind of failed client authentications (per client id or IP and window).
const SHARED_KIND: &str = "fail-client";

impl FailureLimiter {
    /// Seconds until the current window ends if any key is over the limit: counted in Redis when
    /// there is one and it answers, else in this process.
    async fn blocked(
        &self,
        shared: Option<&super::sessions::Store>,
        keys: &[String],
        now: i64,
    ) -> Option<i64> {
        if let Some(store) = shared {
            let window = now.div_euclid(WINDOW_SECS);
            let mut over = false;
            let mut answered = true;
            for k in keys {
                match store.counted(SHARED_KIND, &format!("{k}:{window}")).await {
                    Ok(n) => over |= n >= i64::from(MAX_FAILURES),
                    Err(_) => answered = false,
                }
            }
            if answered {
                return over.then(|| WINDOW_SECS - now.rem_euclid(WINDOW_SECS));
            }
        }
        self.blocked_here(keys, now)
    }

    /// Counts a failure for each of `keys` (see [`Self::blocked`]).
    async fn failed(&self, shared: Option<&super::sessions::Store>, keys: &[String], now: i64) {
        if let Some(store) = shared {
            let window = now.div_euclid(WINDOW_SECS);
            let ttl = u64::try_from(WINDOW_SECS * 2).unwrap_or(600);
            let mut counted = true;
            for k in keys {
                counted &= store
                    .count(SHARED_KIND, &format!("{k}:{window}"), ttl)
                    .await
                    .is_ok();
            }
            if counted {
                return;
            }
        }
        self.failed_here(keys, now);
    }

    /// Seconds until the window of the first blocked key ends, if any key is over the limit.
    fn blocked_here(&self, keys: &[String], now: i64) -> Option<i64> {
        let windows = self.windows.lock().ok()?;
        keys.iter()
            .filter_map(|k| windows.get(k))
            .filter(|(start, n)| now < start + WINDOW_SECS && *n >= MAX_FAILURES)
            .map(|(start, _)| start + WINDOW_SECS - now)
            .max()
    }

    fn failed_here(&self, keys: &[String], now: i64) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        // Bounded: a flood of distinct ids cannot grow the map without end.
        if windows.len() > 50_000 {
            windows.retain(|_, (start, _)| now < *start + WINDOW_SECS);
        }
        for k in keys {
            let w = windows.entry(k.clone()).or_insert((now, 0));
            if now >= w.0 + WINDOW_SECS {
                *w = (now, 0);
            }
            w.1 += 1;
        }
    }
}

/// The peer's IP when the server records it (`into_make_service_with_connect_info`).
pub struct PeerIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self(ip))
    }
}

/// A form body's parameters; a repeated parameter is an error (RFC 6749 §3.1).
fn parse_form(headers: &HeaderMap, body: &Bytes) -> Result<HashMap<String, String>, OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(OAuthError::request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut form = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if form.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::request(format!("parameter `{k}` repeated")));
        }
    }
    Ok(form)
}

/// How a caller presented itself as a client.
enum Presented {
    /// `client_secret_basic` or `client_secret_post`.
    Secret(String, Secret<String>),
    /// `private_key_jwt`: the assertion.
    Assertion(String),
    /// A public client: its id alone.
    Public(String),
}

/// The client credentials of a request: exactly one method (RFC 6749 §2.3); a `client_id` in the
/// body next to them must name the same client.
fn presented(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Presented, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    let assertion =
        form.contains_key("client_assertion") || form.contains_key("client_assertion_type");
    let body_secret = form.get("client_secret");
    let methods = [basic.is_some(), assertion, body_secret.is_some()];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(OAuthError::request("use one client authentication method"));
    }
    let found = if assertion {
        if form.get("client_assertion_type").map(String::as_str) != Some(assertion::JWT_BEARER) {
            return Err(OAuthError::client());
        }
        let jwt = form
            .get("client_assertion")
            .ok_or_else(OAuthError::client)?;
        Presented::Assertion(jwt.clone())
    } else if let Some(b64) = basic {
        basic_credentials(b64)?
    } else {
        match (form.get("client_id"), body_secret) {
            (Some(id), Some(secret)) => Presented::Secret(id.clone(), Secret::new(secret.clone())),
            (Some(id), None) => Presented::Public(id.clone()),
            _ => return Err(OAuthError::client()),
        }
    };
    Ok(found)
}

/// `Authorization: Basic` credentials.
fn basic_credentials(b64: &str) -> Result<Presented, OAuthError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| OAuthError::client())?;
    let text = String::from_utf8(raw).map_err(|_| OAuthError::client())?;
    let (id, secret) = text.split_once(':').ok_or_else(OAuthError::client)?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded inside the Basic credentials.
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Presented::Secret(decode(id), Secret::new(decode(secret))))
}

/// Authenticates the calling client at `endpoint` (its URL, an accepted assertion audience), rate
/// limited per id and per IP. Public clients pass only where `public_ok`.
pub(crate) async fn authenticate(
    identity: &Identity,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    ip: Option<IpAddr>,
    endpoint: &str,
) -> Result<Client, OAuthError> {
    let presented = presented(headers, form)?;
    let id = match &presented {
        Presented::Secret(id, _) | Presented::Public(id) => id.clone(),
        Presented::Assertion(jwt) => {
            assertion::claimed_client(jwt).ok_or_else(OAuthError::client)?
        }
    };
    if form.get("client_id").is_some_and(|body_id| *body_id != id) {
        return Err(OAuthError::client());
    }
    let now = identity.clock.now().timestamp();
    let mut keys = vec![format!("client:{id}")];
    keys.extend(ip.map(|ip| format!("ip:{ip}")));
    if let Some(wait) = identity
        .limiter
        .blocked(identity.sessions.as_ref(), &keys, now)
        .await
    {
        let mut e = OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "too many failed client authentications; retry later",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let found = clients::find(&identity.pool, &id).await?;
    match check_presented(identity, found, presented, endpoint).await? {
        Some(c) => Ok(c),
        None => {
            identity
                .limiter
                .failed(identity.sessions.as_ref(), &keys, now)
                .await;
            tracing::info!(client_id = %id, ?ip, "identity: client authentication failed");
            Err(OAuthError::client())
        }
    }
}

/// The client if `presented` proves it is `found` with the method it registered.
async fn check_presented(
    identity: &Identity,
    found: Option<(Client, Option<String>)>,
    presented: Presented,
    endpoint: &str,
) -> Result<Option<Client>, IdentityError> {
    match presented {
        Presented::Secret(_, secret) => {
            // An unknown id (or a client without a secret) still pays one hash verification, so
            // timing does not tell ids apart.
            let (client, hash) = match found {
                Some((c, Some(h))) if c.auth_method == "client_secret" => (Some(c), h),
                _ => (None, dummy_hash().await?),
            };
            let ok = clients::verify_client_secret(hash, secret).await;
            Ok(client.filter(|_| ok))
        }
        Presented::Public(_) => Ok(found.map(|(c, _)| c).filter(|c| c.auth_method == "none")),
        Presented::Assertion(jwt) => match found {
            Some((c, _)) if c.auth_method == "private_key_jwt" => {
                let ok = assertion::verify(identity, &c, &jwt, endpoint).await?;
                Ok(ok.then_some(c))
            }
            _ => Ok(None),
        },
    }
}

/// An argon2id hash of a random value (made once), verified against for unknown client ids.
pub(crate) async fn dummy_hash() -> Result<String, IdentityError> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| async { clients::hash_secret(clients::new_secret()?).await })
        .await
        .cloned()
}

/// `POST /oauth2/token`.
async fn token(
    Extension(identity): Extension<Arc<Identity>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = parse_form(&headers, &body)?;
    let grant = form
        .get("grant_type")
        .ok_or_else(|| OAuthError::request("`grant_type` is required"))?;
    let endpoint = format!("{}/oauth2/token", identity.settings.issuer);
    let client = authenticate(&identity, &headers, &form, ip, &endpoint).await?;
    let body = match grant.as_str() {
        "client_credentials" => client_credentials(&identity, &client, &form).await?,
        "authorization_code" => grants::redeem_code(&identity, &client, &form).await?,
        "refresh_token" => grants::refresh(&identity, &client, &form).await?,
        _ => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "supported: client_credentials, authorization_code, refresh_token",
            ))
        }
    };
    Ok((no_store(), Json(body)).into_response())
}

/// `grant_type=client_credentials`: a token for the client itself.
async fn client_credentials(
    identity: &Identity,
    client: &Client,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, OAuthError> {
    if !client.allows("client_credentials") {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "this client is not registered for client_credentials",
        ));
    }
    let scopes = granted_scopes(client, form.get("scope"))?;
    let jti = uuid::Uuid::new_v4().to_string();
    let (jwt, ttl) = issue_access(identity, client, None, &scopes, jti).await?;
    Ok(json!({
        "access_token": jwt,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scopes.join(" "),
    }))
}

/// The requested scopes (all the client's when none are asked for); any not allowed is an error.
fn granted_scopes(client: &Client, requested: Option<&String>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.clone());
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !client.scopes.iter().any(|a| a == s) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("scope `{s}` is not allowed for this client"),
            ));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "empty scope",
        ));
    }
    Ok(scopes)
}

/// Signs an access token issued through `client` (for `person` if one logged in, else for the client
/// itself) with `scopes` and `jti`; returns it and its lifetime in seconds.
pub(crate) async fn issue_access(
    identity: &Identity,
    client: &Client,
    person: Option<&Person>,
    scopes: &[String],
    jti: String,
) -> Result<(String, i64), OAuthError> {
    let alg = Alg::parse(&client.alg).unwrap_or(Alg::ES256);
    let now = identity.clock.now().timestamp();
    let ttl = i64::from(client.token_ttl_secs);
    let (sub, org, tier, roles) = match person {
        Some(p) => (
            p.id.to_string(),
            Some(p.org.to_string()),
            None,
            p.roles.clone(),
        ),
        None => (
            client.id.clone(),
            client.org_id.map(|o| o.to_string()),
            client.tier.clone(),
            client.roles.clone(),
        ),
    };
    let claims = Claims {
        iss: identity.settings.issuer.clone(),
        sub,
        aud: client.audience.clone(),
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti,
        scope: scopes.join(" "),
        client_id: client.id.clone(),
        org,
        tier,
        roles,
    };
    Ok((sign(identity, alg, "at+jwt", &claims).await?, ttl))
}

/// Signs `claims` with the active key of `alg` (cached decrypted, see [`keys::SignerCache`]).
pub(crate) async fn sign<T: Serialize>(
    identity: &Identity,
    alg: Alg,
    typ: &str,
    claims: &T,
) -> Result<String, IdentityError> {
    let s = &identity.settings;
    let signer = keys::cached_signer(&identity.pool, &s.master, &identity.signers, alg).await?;
    let mut header = Header::new(signer.alg.jwt());
    header.kid = Some(signer.kid.clone());
    header.typ = Some(typ.into());
    jsonwebtoken::encode(&header, claims, &signer.key)
        .map_err(|e| IdentityError::Internal(format!("signing: {e}")))
}

/// The claims of `token` if this server issued it, its signature holds and it has not expired (at
/// `now`); revocation is checked by the caller.
pub(crate) async fn verify(
    identity: &Identity,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<Claims>, IdentityError> {
    if token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else {
        return Ok(None);
    };
    let Some((alg, key)) = keys::decoding_key(&identity.pool, &kid).await? else {
        return Ok(None);
    };
    let mut v = Validation::new(alg.jwt());
    v.set_issuer(&[&identity.settings.issuer]);
    // Any audience: introspection answers for tokens of every resource server.
    v.validate_aud = false;
    // Expiry is checked below against the injected clock.
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key, &v) else {
        return Ok(None);
    };
    let now = now.timestamp();
    let c = data.claims;
    Ok((c.exp > now && c.nbf <= now).then_some(c))
}

/// `POST /oauth2/introspect` (RFC 7662).
async fn introspect(
    Extension(identity): Extension<Arc<Identity>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = parse_form(&headers, &body)?;
    let endpoint = format!("{}/oauth2/introspect", identity.settings.issuer);
    let caller = authenticate(&identity, &headers, &form, ip, &endpoint).await?;
    // A public client holds no secret: it cannot be trusted with other clients' token metadata.
    if caller.auth_method == "none" {
        return Err(OAuthError::client());
    }
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::request("`token` is required"))?;
    let inactive = || (no_store(), Json(json!({ "active": false }))).into_response();
    let Some(claims) = verify(&identity, token, identity.clock.now()).await? else {
        return Ok(inactive());
    };
    let revoked = match &identity.revoked {
        Some(r) => r.is_revoked(&claims.jti).await?,
        None => false,
    };
    if revoked {
        return Ok(inactive());
    }
    let mut body = serde_json::to_value(&claims)
        .map_err(|e| IdentityError::Internal(format!("claims: {e}")))?;
    if let Some(fields) = body.as_object_mut() {
        fields.insert("active".into(), true.into());
        fields.insert("token_type".into(), "Bearer".into());
    }
    Ok((no_store(), Json(body)).into_response())
}

/// `POST /oauth2/revoke` (RFC 7009): a token of the calling client is revoked until it expires; an
/// invalid or unknown token is a 200 all the same (§2.2).
async fn revoke(
    Extension(identity): Extension<Arc<Identity>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = parse_form(&headers, &body)?;
    let endpoint = format!("{}/oauth2/revoke", identity.settings.issuer);
    let client = authenticate(&identity, &headers, &form, ip, &endpoint).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::request("`token` is required"))?;
    if let Some(hint) = form.get("token_type_hint") {
        if hint != "access_token" && hint != "refresh_token" {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                "access_token or refresh_token",
            ));
        }
    }
    // A refresh token revokes its whole family (RFC 7009 §2.1 allows taking its access tokens too).
    match grants::revoke_refresh(&identity, &client, token).await? {
        Some(true) => return Ok((StatusCode::OK, no_store()).into_response()),
        Some(false) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "the token was issued to another client",
            ))
        }
        None => {}
    }
    let now = identity.clock.now();
    let Some(claims) = verify(&identity, token, now).await? else {
        return Ok((StatusCode::OK, no_store()).into_response());
    };
    if claims.client_id != client.id {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "the token was issued to another client",
        ));
    }
    let revocations = identity.revocations()?;
    let ttl = u64::try_from(claims.exp - now.timestamp()).unwrap_or(1);
    revocations.revoke(&claims.jti, ttl).await?;
    tracing::info!(client_id = %client.id, jti = %claims.jti, "identity: token revoked");
    Ok((StatusCode::OK, no_store()).into_response())
}

/// The discovery document: only endpoints, grants and methods that exist.
fn metadata(identity: &Identity) -> serde_json::Value {
    let iss = &identity.settings.issuer;
    let algs: Vec<&str> = identity.settings.algs.iter().map(|a| a.as_str()).collect();
    let methods = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ];
    let assertion_algs = ["ES256", "RS256", "EdDSA"];
    json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "userinfo_endpoint": format!("{iss}/oauth2/userinfo"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
            "email", "name", "org", "roles"],
        // `none` is for public clients at the token endpoint only.
        "token_endpoint_auth_methods_supported": [methods[0], methods[1], methods[2], "none"],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint_auth_methods_supported": [methods[0], methods[1], methods[2], "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "id_token_signing_alg_values_supported": algs,
        "subject_types_supported": ["public"],
        "prompt_values_supported": ["none", "login"],
    })
}

async fn discovery(Extension(identity): Extension<Arc<Identity>>) -> Response {
    let max_age = identity.settings.policy.publish_ahead.num_seconds();
    let cache = format!("public, max-age={max_age}");
    let mut res = Json(metadata(&identity)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cache) {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    res
}

/// `GET /.well-known/jwks.json`, cacheable for exactly the publish-ahead time.
async fn jwks(Extension(identity): Extension<Arc<Identity>>) -> Result<Response, OAuthError> {
    let set = keys::jwks(&identity.pool).await?;
    let max_age = identity.settings.policy.publish_ahead.num_seconds();
    let mut res = Json(set).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

/// Answers 503 until migrations are done (the app's own gate covers only `/v1`).
pub(crate) async fn migrated(
    State(state): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.is_migrated() {
        next.run(req).await
    } else {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the database schema is not ready yet",
        )
        .into_response()
    }
}

/// The protocol endpoints at the root.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/authorize", get(authorize::authorize))
        .route("/oauth2/login", post(authorize::login))
        .route("/oauth2/userinfo", get(oidc::userinfo).post(oidc::userinfo))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_maps_to_an_admin_principal() {
        let claims = Claims {
            iss: "http://cp".into(),
            sub: "cl_1".into(),
            aud: "leaky-tokens".into(),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            scope: "admin read".into(),
            client_id: "cl_1".into(),
            org: None,
            tier: None,
            roles: vec!["platform-admin".into(), "wizard".into()],
        };
        let p = principal(&claims);
        assert_eq!(p.subject, "client:cl_1");
        assert!(p.has_scope("read") && p.has_scope("anything"));
        let grant = super::super::rbac::grant(&p);
        assert_eq!(grant.roles, vec![super::super::rbac::Role::PlatformAdmin]);
        assert!(p.org.is_none());
    }

    #[test]
    fn the_failure_limiter_blocks_per_key_until_the_window_ends() {
        let limiter = FailureLimiter::default();
        let keys = vec!["client:a".to_owned(), "ip:1.2.3.4".to_owned()];
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.blocked_here(&keys, 100), None);
            limiter.failed_here(&keys, 100);
        }
        assert_eq!(limiter.blocked_here(&keys, 100), Some(WINDOW_SECS));
        assert_eq!(limiter.blocked_here(&["client:b".to_owned()], 100), None);
        assert_eq!(limiter.blocked_here(&keys, 100 + WINDOW_SECS), None);
    }
}
