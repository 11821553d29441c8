//! People who log in: the org's users (`tenancy.users`, with their roles) get a password here
//! (`identity.user_credentials`, argon2id PHC strings, as client secrets are), and the login check
//! with its brute-force defences.
//!
//! **Lockout.** Failed logins are counted in Redis (shared by replicas) per account and per peer IP in
//! fixed windows of [`LOGIN_WINDOW_SECS`] numbered on the injected clock. Past
//! [`MAX_ACCOUNT_FAILURES`] the account is locked until the window ends; a locked account answers
//! exactly like a wrong password (no user enumeration) and still costs one argon2 verification, as
//! an unknown login does (a dummy hash), so timing tells nothing either. Past [`MAX_IP_FAILURES`] the
//! address gets 429 whatever it tries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::clients;
use super::secrets::Secret;
use super::{Identity, IdentityError};
use crate::tenancy;

/// Failed logins one account may have in a window before it is locked.
pub const MAX_ACCOUNT_FAILURES: i64 = 5;
/// Failed logins one peer IP may have in a window before it gets 429.
pub const MAX_IP_FAILURES: i64 = 20;
/// The lockout window.
pub const LOGIN_WINDOW_SECS: i64 = 900;
/// Password length bounds (characters); the upper one bounds the hashing work per attempt.
const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 256;

/// The dev user (dev mode only): org `dev`, `org-admin`.
pub const DEV_USER_EMAIL: &str = "dev@leaky.local";
pub const DEV_USER_PASSWORD: &str = "dev-password-1234";

/// `PUT /v1/orgs/{org}/users/{user}/password` body (its `Debug` redacts the password).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// 12 to 256 characters.
    #[schema(example = "<a new password>")]
    pub password: String,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword { password: <redacted> }")
    }
}

/// Who logged in: what tokens and `userinfo` say about a person.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Person {
    pub id: Uuid,
    pub org: Uuid,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
}

impl From<tenancy::users::User> for Person {
    fn from(u: tenancy::users::User) -> Self {
        Self {
            id: u.id,
            org: u.org_id,
            email: u.email,
            name: u.name,
            roles: u.roles,
        }
    }
}

/// User `user` of org `org` (`NotFound` when either is unknown or the org is deleted).
pub async fn person(pool: &PgPool, org: Uuid, user: Uuid) -> Result<Person, IdentityError> {
    match tenancy::users::get(pool, org, user).await {
        Ok(u) => Ok(u.into()),
        Err(tenancy::TenancyError::NotFound { .. }) => {
            Err(IdentityError::NotFound(format!("user `{user}` not found")))
        }
        Err(tenancy::TenancyError::Db(e)) => Err(e.into()),
        Err(e) => Err(IdentityError::Internal(e.to_string())),
    }
}

/// Sets (or replaces) the password of user `user` of org `org`; its login is its e-mail.
pub async fn set_password(
    pool: &PgPool,
    org: Uuid,
    user: Uuid,
    password: Secret<String>,
    now: DateTime<Utc>,
) -> Result<Person, IdentityError> {
    let chars = password.expose().chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&chars) {
        return Err(IdentityError::Field(
            "password".into(),
            format!("must be {MIN_PASSWORD}..={MAX_PASSWORD} characters"),
        ));
    }
    let person = person(pool, org, user).await?;
    let hash = clients::hash_secret(password).await?;
    let done = sqlx::query(
        "INSERT INTO identity.user_credentials (user_id, org_id, login, password_hash, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id) DO UPDATE SET password_hash = $4, login = $3, updated_at = $5",
    )
    .bind(person.id)
    .bind(person.org)
    .bind(person.email.to_ascii_lowercase())
    .bind(hash)
    .bind(now)
    .execute(pool)
    .await;
    match done {
        Ok(_) => Ok(person),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(IdentityError::Conflict(
            "another user with this e-mail already has a password".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum LoginOutcome {
    Ok(Person),
    /// Wrong password, unknown login or locked account: indistinguishable on purpose.
    Invalid,
    /// Too many failures from this address: retry after this many seconds.
    Throttled(i64),
}

/// Checks `login`/`password` from `ip` with the lockout rules (see the module docs).
pub async fn login(
    identity: &Identity,
    login: &str,
    password: Secret<String>,
    ip: Option<std::net::IpAddr>,
) -> Result<LoginOutcome, IdentityError> {
    let store = identity.sessions()?;
    let now = identity.clock.now().timestamp();
    let window = now.div_euclid(LOGIN_WINDOW_SECS);
    let wait = LOGIN_WINDOW_SECS - now.rem_euclid(LOGIN_WINDOW_SECS);
    let ttl = u64::try_from(LOGIN_WINDOW_SECS * 2).unwrap_or(1800);
    let login = login.trim().to_ascii_lowercase();
    let account = format!("{}:{window}", super::sessions::digest(&login));
    let ip_key = ip.map(|ip| format!("{ip}:{window}"));
    if let Some(k) = &ip_key {
        if store.counted("fail-ip", k).await? >= MAX_IP_FAILURES {
            return Ok(LoginOutcome::Throttled(wait));
        }
    }
    let locked = store.counted("fail-user", &account).await? >= MAX_ACCOUNT_FAILURES;
    let found: Option<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT user_id, org_id, password_hash FROM identity.user_credentials WHERE login = $1",
    )
    .bind(&login)
    .fetch_optional(&identity.pool)
    .await?;
    let hash = match &found {
        Some((_, _, h)) => h.clone(),
        None => super::oauth::dummy_hash().await?,
    };
    let verified = clients::verify_secret(hash, password).await;
    if let (Some((user, org, _)), true, false) = (&found, verified, locked) {
        return Ok(LoginOutcome::Ok(person(&identity.pool, *org, *user).await?));
    }
    store.count("fail-user", &account, ttl).await?;
    if let Some(k) = &ip_key {
        store.count("fail-ip", k, ttl).await?;
    }
    tracing::info!(?ip, locked, "identity: failed login");
    Ok(LoginOutcome::Invalid)
}

/// Seeds the dev user (dev mode): org `dev`, [`DEV_USER_EMAIL`] with `org-admin`, password
/// [`DEV_USER_PASSWORD`]. Idempotent.
pub async fn seed_dev_user(identity: &Identity) -> Result<(), IdentityError> {
    let pool = &identity.pool;
    let org: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenancy.orgs WHERE name = 'dev' AND deleted_at IS NULL")
            .fetch_optional(pool)
            .await?;
    let org = match org {
        Some(o) => o,
        None => {
            tenancy::orgs::create(pool, "dev-seed", "dev")
                .await
                .map_err(|e| IdentityError::Internal(e.to_string()))?
                .id
        }
    };
    let user: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenancy.users WHERE org_id = $1 AND email = $2")
            .bind(org)
            .bind(DEV_USER_EMAIL)
            .fetch_optional(pool)
            .await?;
    let user = match user {
        Some(u) => u,
        None => {
            let new = tenancy::users::NewUser {
                email: DEV_USER_EMAIL.into(),
                name: Some("Dev User".into()),
                roles: vec!["org-admin".into()],
            };
            tenancy::users::create(pool, "dev-seed", org, &new)
                .await
                .map_err(|e| IdentityError::Internal(e.to_string()))?
                .id
        }
    };
    let password = Secret::new(DEV_USER_PASSWORD.to_owned());
    set_password(pool, org, user, password, identity.clock.now()).await?;
    Ok(())
}
