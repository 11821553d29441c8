//! Admin routes of the identity context under `/v1/identity`: OAuth2 clients (the secret is returned
//! once) and signing keys (list, rotate). Guarded by the admin [`Principal`]; every change is audited
//! with its domain event on the tenancy topic.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;
use uuid::Uuid;

use super::clients::{self, Client, Created, NewClient};
use super::keys::{self, KeyInfo};
use super::secrets::Secret;
use super::users::{self, NewPassword};
use super::{
    Identity, IdentityError, DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_LOGIN_CLIENT_ID,
    DEV_LOGIN_REDIRECT_URI,
};
use crate::apidoc::problems;
use crate::audit;
use crate::http::{ApiJson, ApiState, Page, Principal, Problem};
use crate::outbox::TENANCY_TOPIC;

const AT: &str = "2026-01-15T09:30:00Z";

fn example_client() -> Value {
    json!({"id": "cl_5f2c0e9a4b7d41e3a8c6f1d2", "name": "billing-exporter", "scopes": ["admin"],
           "audience": "leaky-tokens", "org_id": null, "tier": null, "roles": ["platform-admin"],
           "token_ttl_secs": 600, "alg": "ES256", "created_at": AT})
}

fn example_key() -> Value {
    json!({"kid": "es256-8c1f0a2b3c4d5e6f7a8b9c0d", "alg": "ES256", "state": "pending",
           "created_at": AT, "activate_at": "2026-01-15T09:35:00Z", "activated_at": null,
           "retired_at": null, "remove_at": null})
}

#[utoipa::path(
    post, path = "/v1/identity/clients", tag = "identity", operation_id = "create_client",
    request_body(content = NewClient, example = json!({"name": "billing-exporter", "scopes": ["admin"], "roles": ["platform-admin"]})),
    responses(
        (status = 201, description = "Created. `client_secret` is shown only here; only its argon2id hash is stored.",
         body = Created, example = json!({"client_secret": "<returned once>"})),
        (status = 400, response = problems::MalformedJson),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Create an OAuth2 client (`client_credentials`).
async fn create(
    principal: Principal,
    State(state): State<ApiState>,
    Extension(identity): Extension<Arc<Identity>>,
    ApiJson(new): ApiJson<NewClient>,
) -> Result<(StatusCode, Json<Created>), Problem> {
    // Only a `client_secret` client has a secret; the others authenticate by key or not at all.
    let secret = match new.auth_method.as_deref() {
        None | Some("client_secret") => Some(clients::new_secret()?),
        Some(_) => None,
    };
    let client = create_client(
        &identity,
        &state,
        &principal.subject,
        None,
        &new,
        secret.as_ref(),
    )
    .await?;
    let client_secret = secret.map(|s| s.expose().clone());
    Ok((
        StatusCode::CREATED,
        Json(Created {
            client,
            client_secret,
        }),
    ))
}

/// Validates, hashes and inserts a client (id `id` or a new one), audited as `actor`.
async fn create_client(
    identity: &Identity,
    state: &ApiState,
    actor: &str,
    id: Option<&str>,
    new: &NewClient,
    secret: Option<&Secret<String>>,
) -> Result<Client, IdentityError> {
    let s = &identity.settings;
    let max = i32::try_from(s.policy.max_token_ttl.num_seconds()).unwrap_or(i32::MAX);
    let default_ttl = i32::try_from(s.token_ttl.num_seconds()).unwrap_or(600);
    let filled = clients::validate(new, &s.default_audience, default_ttl, max)?;
    let hash = match secret {
        Some(s) => Some(clients::hash_secret(s.clone()).await?),
        None => None,
    };
    let id = match id {
        Some(id) => id.to_owned(),
        None => clients::new_id()?,
    };
    let mut tx = crate::db::begin(&state.pool).await?;
    let now = state.clock.now();
    let client = clients::insert(&mut tx, &id, new, filled, hash.as_deref(), now).await?;
    let change = audit::Change {
        actor,
        action: "client.create",
        object_kind: "oauth_client",
        object_id: client.id.clone(),
        detail: json!({ "name": client.name, "scopes": client.scopes, "roles": client.roles }),
    };
    audit::with_event(
        &mut tx,
        TENANCY_TOPIC,
        "oauth_client",
        "oauth_client.created",
        change,
    )
    .await?;
    tx.commit().await?;
    Ok(client)
}

#[utoipa::path(
    get, path = "/v1/identity/clients", tag = "identity", operation_id = "list_clients",
    responses(
        (status = 200, description = "Every client, oldest first (secrets are never shown again)",
         body = Page<Client>, example = json!({"items": [example_client()]})),
    )
)]
/// List OAuth2 clients.
async fn list(
    _: Principal,
    Extension(identity): Extension<Arc<Identity>>,
) -> Result<Json<Page<Client>>, Problem> {
    let items = clients::list(&identity.pool).await?;
    Ok(Json(Page { items, next: None }))
}

#[utoipa::path(
    delete, path = "/v1/identity/clients/{id}", tag = "identity", operation_id = "delete_client",
    params(("id" = String, Path, description = "The client's id")),
    responses(
        (status = 204, description = "Deleted: it can get no new token (tokens already issued live until they expire or are revoked)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Delete an OAuth2 client.
async fn remove(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let well_formed = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(Problem::field("id", "not a client id"));
    }
    let mut tx = crate::db::begin(&state.pool).await?;
    if !clients::delete(&mut tx, &id).await? {
        return Err(IdentityError::NotFound(format!("no client {id}")).into());
    }
    let change = audit::Change {
        actor: &principal.subject,
        action: "client.delete",
        object_kind: "oauth_client",
        object_id: id.clone(),
        detail: json!({}),
    };
    audit::with_event(
        &mut tx,
        TENANCY_TOPIC,
        "oauth_client",
        "oauth_client.deleted",
        change,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/identity/keys", tag = "identity", operation_id = "list_signing_keys",
    responses(
        (status = 200, description = "Every signing key, newest first (public metadata only)",
         body = Vec<KeyInfo>, example = json!([example_key()])),
    )
)]
/// List token signing keys.
async fn list_keys(
    _: Principal,
    Extension(identity): Extension<Arc<Identity>>,
) -> Result<Json<Vec<KeyInfo>>, Problem> {
    Ok(Json(keys::list(&identity.pool).await?))
}

#[utoipa::path(
    post, path = "/v1/identity/keys/rotate", tag = "identity", operation_id = "rotate_signing_keys",
    responses(
        (status = 200, description = "A pending key per algorithm (new, or the one already pending): \
            published now, signing from `activate_at` (one JWKS cache lifetime later)",
         body = Vec<KeyInfo>, example = json!([example_key()])),
    )
)]
/// Start a signing-key rotation.
async fn rotate(
    principal: Principal,
    State(state): State<ApiState>,
    Extension(identity): Extension<Arc<Identity>>,
) -> Result<Json<Vec<KeyInfo>>, Problem> {
    let s = &identity.settings;
    let now = state.clock.now();
    let pending = keys::rotate(&identity.pool, &s.master, &s.policy, &s.algs, now).await?;
    let mut conn = state.pool.acquire().await?;
    let change = audit::Change {
        actor: &principal.subject,
        action: "signing_key.rotate",
        object_kind: "signing_key",
        object_id: pending
            .iter()
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>()
            .join(","),
        detail: json!({ "pending": pending.iter().map(|k| &k.kid).collect::<Vec<_>>() }),
    };
    audit::record(&mut conn, change).await?;
    Ok(Json(pending))
}

/// Seeds the dev client `dev-admin` / `dev-admin-secret` (`platform-admin`, scope `admin`) if absent.
pub async fn seed_dev_client(identity: &Identity) -> Result<(), IdentityError> {
    if clients::find(&identity.pool, DEV_CLIENT_ID)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let state = ApiState::new(identity.pool.clone(), crate::http::AdminToken::new(""))
        .with_clock(identity.clock.clone());
    let new = NewClient {
        name: "dev admin (dev mode only)".into(),
        scopes: vec![crate::http::SCOPE_ADMIN.into()],
        audience: Some(identity.settings.admin_audience.clone()),
        org_id: None,
        tier: None,
        roles: vec!["platform-admin".into()],
        token_ttl_secs: None,
        alg: None,
        redirect_uris: vec![],
        grant_types: None,
        auth_method: None,
        jwks: None,
    };
    let secret = Secret::new(DEV_CLIENT_SECRET.to_owned());
    let made = create_client(
        identity,
        &state,
        "dev-seed",
        Some(DEV_CLIENT_ID),
        &new,
        Some(&secret),
    )
    .await;
    match made {
        Ok(_) | Err(IdentityError::Conflict(_)) => seed_dev_login_client(identity, &state).await,
        Err(e) => Err(e),
    }
}

/// Seeds the public dev client [`DEV_LOGIN_CLIENT_ID`] (authorization_code + PKCE, refresh tokens,
/// OIDC; redirect URI [`DEV_LOGIN_REDIRECT_URI`]) for people logging in, e.g. from a CLI.
async fn seed_dev_login_client(identity: &Identity, state: &ApiState) -> Result<(), IdentityError> {
    if clients::find(&identity.pool, DEV_LOGIN_CLIENT_ID)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let scopes = ["openid", "profile", "email", "offline_access", "admin"];
    let new = NewClient {
        name: "dev login (dev mode only)".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        audience: Some(identity.settings.admin_audience.clone()),
        org_id: None,
        tier: None,
        roles: vec![],
        token_ttl_secs: None,
        alg: None,
        redirect_uris: vec![DEV_LOGIN_REDIRECT_URI.into()],
        grant_types: Some(vec!["authorization_code".into(), "refresh_token".into()]),
        auth_method: Some("none".into()),
        jwks: None,
    };
    let id = Some(DEV_LOGIN_CLIENT_ID);
    match create_client(identity, state, "dev-seed", id, &new, None).await {
        Ok(_) | Err(IdentityError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[utoipa::path(
    put, path = "/v1/orgs/{org}/users/{user}/password", tag = "identity", operation_id = "set_user_password",
    params(("org" = Uuid, Path, description = "The org's id"), ("user" = Uuid, Path, description = "The user's id")),
    request_body(content = NewPassword, example = json!({"password": "<a new password>"})),
    responses(
        (status = 204, description = "Set: the user can log in (authorization_code) with its e-mail and this password. Only its argon2id hash is stored."),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Set a user's password.
async fn set_password(
    principal: Principal,
    State(state): State<ApiState>,
    Extension(identity): Extension<Arc<Identity>>,
    Path((org, user)): Path<(String, String)>,
    ApiJson(body): ApiJson<NewPassword>,
) -> Result<StatusCode, Problem> {
    let org = Uuid::parse_str(&org).map_err(|_| Problem::field("org", "not an org id"))?;
    let user = Uuid::parse_str(&user).map_err(|_| Problem::field("user", "not a user id"))?;
    let now = state.clock.now();
    let password = Secret::new(body.password);
    let person = users::set_password(&identity.pool, org, user, password, now).await?;
    let mut conn = state.pool.acquire().await?;
    let change = audit::Change {
        actor: &principal.subject,
        action: "user.set_password",
        object_kind: "user",
        object_id: person.id.to_string(),
        detail: json!({ "org": person.org }),
    };
    audit::record(&mut conn, change).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, remove, list_keys, rotate, set_password))]
struct Doc;

/// The OpenAPI paths of the identity admin routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// `/identity/*` (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/identity/clients", post(create).get(list))
        .route("/identity/clients/{id}", delete(remove))
        .route("/identity/keys", get(list_keys))
        .route("/identity/keys/rotate", post(rotate))
        .route("/orgs/{org}/users/{user}/password", put(set_password))
}
