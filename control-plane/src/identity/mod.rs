//! Bounded context "identity" (Postgres schema `identity`, issue 14): the control plane as an OAuth2
//! authorization server and OpenID provider, for services and for people.
//!
//! - [`secrets`]: envelope encryption of secrets at rest (AES-256-GCM data keys under versioned
//!   master keys from `LEAKY_MASTER_KEY` / `LEAKY_MASTER_KEY_FILE`), and the redacting [`Secret`].
//! - [`keys`]: ES256, RS256 and EdDSA signing keys, encrypted in Postgres, rotated with overlap.
//! - [`clients`]: OAuth2 clients with argon2id-hashed secrets; the admin API in [`api`].
//! - [`oauth`]: discovery, JWKS, `POST /oauth2/token` (`client_credentials`), introspection (RFC 7662)
//!   and revocation (RFC 7009); revoked token ids live in Redis ([`revoked`]) until the token expires,
//!   so every replica sees them.
//! - People: [`users`] (passwords, lockout), [`authorize`] (`GET /oauth2/authorize`, the login page),
//!   [`grants`] (`authorization_code` + PKCE S256, `refresh_token` with rotation and reuse
//!   detection), [`oidc`] (ID tokens, `userinfo`), all keeping their state in Redis ([`sessions`]).
//! - [`assertion`]: `private_key_jwt` client authentication (RFC 7523).
//! - [`provider_credentials`]: upstream API keys sealed at rest, referenced by the config base as
//!   `${secret:<name>}` and resolved only into what proxies receive.
//!
//! Identity runs only with a master key: [`Settings::from_env`] refuses without one unless
//! `LEAKY_IDENTITY_DEV=1` selects the public dev key (and seeds the dev client `dev-admin` /
//! `dev-admin-secret`). The bootstrap admin token still guards `/v1` in this increment; a token from
//! this server becomes a [`crate::http::Principal`] through [`oauth::principal`] once RBAC lands.

pub mod api;
pub mod assertion;
pub mod authorize;
pub mod clients;
pub mod grants;
pub mod keys;
pub mod oauth;
pub mod oidc;
pub mod provider_credentials;
pub mod rbac;
pub mod revoked;
pub mod secrets;
pub mod sessions;
pub mod users;

use std::sync::Arc;

use axum::Router;
use chrono::Duration;
use sqlx::PgPool;

use crate::clock::Clock;
use crate::http::{ApiState, Problem, ProblemKind};

pub use keys::{Alg, Policy};
pub use secrets::{MasterKeys, Secret, SecretError};

/// The dev client's id and secret (dev mode only, see DESIGN.md's full-stack contract).
pub const DEV_CLIENT_ID: &str = "dev-admin";
pub const DEV_CLIENT_SECRET: &str = "dev-admin-secret";

/// The public dev client people log in with (dev mode only): authorization_code + PKCE.
pub const DEV_LOGIN_CLIENT_ID: &str = "dev-login";
pub const DEV_LOGIN_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";

/// The default audience of admin-API tokens (`LEAKY_IDENTITY_ADMIN_AUDIENCE`).
pub const ADMIN_AUDIENCE: &str = "leaky-admin";

/// The identity context's settings (`LEAKY_IDENTITY_*` and the master key).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `iss` of every token and the base of the advertised endpoints.
    pub issuer: String,
    /// The `aud` of tokens of clients created without one.
    pub default_audience: String,
    /// The `aud` a token must carry to be accepted on the admin API (`/v1`): a token minted for the
    /// gateway is not an admin credential.
    pub admin_audience: String,
    pub master: MasterKeys,
    /// Dev mode: the dev client is seeded.
    pub dev: bool,
    /// Lifetime of tokens of clients created without one.
    pub token_ttl: Duration,
    pub policy: Policy,
    /// The algorithms keys are kept for (each gets an active key).
    pub algs: Vec<Alg>,
    /// How long an authorization code may be redeemed (`LEAKY_IDENTITY_CODE_TTL_SECS`, 60).
    pub code_ttl: Duration,
    /// How long a refresh token (and its family) lives (`LEAKY_IDENTITY_REFRESH_TTL_SECS`, 30 days).
    pub refresh_ttl: Duration,
    /// How long a login session lasts (`LEAKY_IDENTITY_SESSION_TTL_SECS`, 8 hours).
    pub session_ttl: Duration,
}

fn env_secs(name: &str, default: i64) -> Result<Duration, SecretError> {
    match std::env::var(name) {
        Err(_) => Ok(Duration::seconds(default)),
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::seconds)
            .ok_or(SecretError::BadMasterKey(
                name.to_owned(),
                "not a positive integer",
            )),
    }
}

impl Settings {
    /// Defaults for `issuer`: 10-minute tokens (1 hour at most), a 5-minute JWKS lifetime (and so
    /// publish-ahead), weekly rotation, all three algorithms.
    pub fn new(issuer: impl Into<String>, master: MasterKeys, dev: bool) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            default_audience: "leaky-tokens".into(),
            admin_audience: ADMIN_AUDIENCE.into(),
            master,
            dev,
            token_ttl: Duration::minutes(10),
            policy: Policy {
                publish_ahead: Duration::minutes(5),
                rotate_every: Duration::days(7),
                max_token_ttl: Duration::hours(1),
            },
            algs: Alg::ALL.to_vec(),
            code_ttl: Duration::seconds(60),
            refresh_ttl: Duration::days(30),
            session_ttl: Duration::hours(8),
        }
    }

    /// From the environment: `LEAKY_IDENTITY_DEV`, `LEAKY_IDENTITY_ISSUER` (default
    /// `default_issuer`), `LEAKY_IDENTITY_TOKEN_TTL_SECS`, `LEAKY_IDENTITY_JWKS_MAX_AGE_SECS`,
    /// `LEAKY_IDENTITY_ROTATE_EVERY_SECS` and the master key ([`MasterKeys::from_env`]).
    pub fn from_env(default_issuer: &str) -> Result<Self, SecretError> {
        let dev = matches!(
            std::env::var("LEAKY_IDENTITY_DEV").as_deref(),
            Ok("1" | "true")
        );
        let master = MasterKeys::from_env(dev)?;
        let issuer = std::env::var("LEAKY_IDENTITY_ISSUER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default_issuer.to_owned());
        let mut s = Self::new(issuer, master, dev);
        if let Some(aud) = std::env::var("LEAKY_IDENTITY_ADMIN_AUDIENCE")
            .ok()
            .filter(|s| !s.is_empty())
        {
            s.admin_audience = aud;
        }
        s.token_ttl = env_secs("LEAKY_IDENTITY_TOKEN_TTL_SECS", 600)?;
        s.policy.publish_ahead = env_secs("LEAKY_IDENTITY_JWKS_MAX_AGE_SECS", 300)?;
        s.policy.rotate_every = env_secs("LEAKY_IDENTITY_ROTATE_EVERY_SECS", 7 * 86_400)?;
        s.code_ttl = env_secs("LEAKY_IDENTITY_CODE_TTL_SECS", 60)?;
        s.refresh_ttl = env_secs("LEAKY_IDENTITY_REFRESH_TTL_SECS", 30 * 86_400)?;
        s.session_ttl = env_secs("LEAKY_IDENTITY_SESSION_TTL_SECS", 8 * 3_600)?;
        s.policy.max_token_ttl = s.policy.max_token_ttl.max(s.token_ttl);
        Ok(s)
    }
}

/// What identity's handlers and jobs share.
pub struct Identity {
    pub settings: Settings,
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    /// Revoked token ids (Redis); `None` without `--redis-url`: revocation answers 503.
    pub revoked: Option<revoked::Revocations>,
    /// Sessions, codes, refresh tokens, counters (Redis); `None` without `--redis-url`: the people
    /// flows and `private_key_jwt` answer 503.
    pub sessions: Option<sessions::Store>,
    pub(crate) limiter: oauth::FailureLimiter,
    /// Decrypted signing keys by `kid`, so issuing a token costs no AES-GCM or key parsing.
    pub(crate) signers: keys::SignerCache,
}

impl Identity {
    pub fn new(
        settings: Settings,
        pool: PgPool,
        clock: Arc<dyn Clock>,
        redis_url: Option<&str>,
    ) -> Result<Arc<Self>, IdentityError> {
        let revoked = redis_url.map(revoked::Revocations::new).transpose()?;
        let sessions = redis_url.map(sessions::Store::new).transpose()?;
        if revoked.is_none() {
            tracing::warn!("identity: no Redis, token revocation is unavailable");
        }
        Ok(Arc::new(Self {
            settings,
            pool,
            clock,
            revoked,
            sessions,
            limiter: oauth::FailureLimiter::default(),
            signers: keys::SignerCache::default(),
        }))
    }

    /// The session store, or 503 without Redis.
    pub fn sessions(&self) -> Result<&sessions::Store, IdentityError> {
        self.sessions.as_ref().ok_or_else(|| {
            IdentityError::Unavailable("logins and sessions need Redis (--redis-url)".into())
        })
    }

    /// The revocation list, or 503 without Redis.
    pub fn revocations(&self) -> Result<&revoked::Revocations, IdentityError> {
        self.revoked.as_ref().ok_or_else(|| {
            IdentityError::Unavailable("revocation needs Redis (--redis-url)".into())
        })
    }

    /// One rotation step now (what the periodic job runs).
    pub async fn tick(&self) -> Result<keys::TickReport, IdentityError> {
        let s = &self.settings;
        keys::tick(&self.pool, &s.master, &s.policy, &s.algs, self.clock.now()).await
    }
}

/// Everything identity serves: the OAuth2 endpoints at the root and the admin routes under
/// `/v1/identity`, with `state` applied (merge it into the app's router).
pub fn router(state: ApiState, identity: Arc<Identity>) -> Router {
    Router::new()
        .merge(oauth::routes())
        .nest(
            "/v1",
            api::routes()
                .merge(provider_credentials::routes())
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    rbac::enforce,
                )),
        )
        .layer(axum::Extension(identity))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            oauth::migrated,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::MAX_BODY_BYTES,
        ))
        .with_state(state)
}

/// `app` (the admin API) with identity's routes merged in and `identity` reachable from every route,
/// so the admin API's [`crate::http::Principal`] accepts this server's access tokens.
pub fn attach(app: Router, state: ApiState, identity: Arc<Identity>) -> Router {
    app.merge(router(state, identity.clone()))
        .layer(axum::Extension(identity))
}

/// Once migrated: seeds the dev clients and the dev user (dev mode), then runs [`Identity::tick`] every
/// [`keys::TICK_EVERY`].
pub async fn run_jobs(state: ApiState, identity: Arc<Identity>) {
    state.migrated().await;
    if identity.settings.dev {
        if let Err(e) = api::seed_dev_client(&identity).await {
            tracing::error!(error = %e, "identity: dev client not seeded");
        }
        if let Err(e) = users::seed_dev_user(&identity).await {
            tracing::error!(error = %e, "identity: dev user not seeded");
        }
    }
    let mut every = tokio::time::interval(keys::TICK_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = identity.tick().await {
            tracing::warn!(error = %e, "identity: key rotation step failed");
        }
    }
}

/// `leaky-tokens control-plane secrets rewrap`: re-encrypts every secret row under the newest
/// master key; returns lines to print.
pub async fn rewrap_command(database_url: &str) -> Result<Vec<String>, IdentityError> {
    let dev = matches!(
        std::env::var("LEAKY_IDENTITY_DEV").as_deref(),
        Ok("1" | "true")
    );
    let master = MasterKeys::from_env(dev)?;
    let pool =
        crate::db::pool(database_url, 2).map_err(|e| IdentityError::Internal(e.to_string()))?;
    crate::db::migrate(&pool)
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    let moved = keys::rewrap_all(&pool, &master).await?;
    let credentials = provider_credentials::rewrap_all(&pool, &master).await?;
    let v = master.newest();
    Ok(vec![
        format!("identity.signing_keys: {moved} row(s) re-wrapped under master key v{v}"),
        format!(
            "identity.provider_credentials: {credentials} row(s) re-wrapped under master key v{v}"
        ),
    ])
}

/// Why an identity operation failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}: {1}")]
    Field(String, String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<IdentityError> for Problem {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Field(f, m) => Problem::field(f, m),
            IdentityError::NotFound(m) => Problem::new(ProblemKind::NotFound, m),
            IdentityError::Conflict(m) => Problem::new(ProblemKind::Conflict, m),
            IdentityError::Unavailable(m) => Problem::new(ProblemKind::Unavailable, m),
            IdentityError::Db(e) => Problem::from(e),
            e => {
                tracing::error!(error = %e, "identity: internal error");
                Problem::new(ProblemKind::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_output_shows_no_key_material() {
        let settings = Settings::new("http://cp/", MasterKeys::dev(), true);
        assert_eq!(settings.issuer, "http://cp");
        let shown = format!("{settings:?}");
        assert!(shown.contains("versions: [1]"), "{shown}");
        assert!(!shown.contains("leaky-tokens-dev-master-key"), "{shown}");
        assert!(!shown.contains("108, 101, 97, 107"), "{shown}");
    }
}
