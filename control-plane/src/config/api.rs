//! Admin routes of the config server: the watch stream and ACK/NACK (for proxies), versions, the YAML
//! base, rollback and per-proxy status (for people).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::OpenApi;

use super::hub::{Hub, Publish};
use super::store::{self, InstanceStatus, VersionSummary};
use super::{watch, ConfigError};
use crate::apidoc::problems;
use crate::http::{ApiJson, ApiQuery, ApiState, FieldError, Page, Principal, Problem, ProblemKind};

/// Largest YAML base accepted (the admin API's usual limit is for small JSON bodies).
pub const MAX_BASE_BYTES: usize = 1024 * 1024;

/// `?instance=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    /// The watching proxy's instance id (1..=128 of `A-Z a-z 0-9 . _ : -`).
    instance: String,
}

fn check_instance(id: &str) -> Result<(), Problem> {
    crate::registry::check_instance_id("instance", id).map_err(|e| Problem::invalid(vec![e]))
}

#[utoipa::path(
    get, path = "/v1/config/watch", tag = "config", params(WatchQuery),
    responses(
        (status = 200, description = "NDJSON stream (`application/x-ndjson`), one event per line, never ending: \
a `snapshot` first, then `snapshot`s and `keys` deltas as versions are published, a `heartbeat` every 10 s; \
with identity on Redis, the complete set of revoked access tokens as a `revoked` event after the first snapshot and on every change. \
See docs/config-protocol.md.", content_type = "application/x-ndjson", body = String,
         example = json!("{\"type\":\"snapshot\",\"version\":12,\"hash\":\"9f2c...\",\"document\":\"{...}\"}\n{\"type\":\"keys\",\"version\":13,\"base\":12,\"hash\":\"51ab...\",\"upsert\":[],\"remove\":[\"7c9e6679-7425-40de-944b-e07fc1f90ae7\"]}\n")),
        (status = 422, response = problems::Validation),
    )
)]
/// Watch the config: the stream proxies hold.
async fn watch_config(
    _: Principal,
    State(s): State<ApiState>,
    Extension(hub): Extension<Arc<Hub>>,
    identity: Option<Extension<Arc<crate::identity::Identity>>>,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Response, Problem> {
    check_instance(&q.instance)?;
    let revoked = identity.and_then(|Extension(id)| id.revoked.as_ref().map(|r| r.subscribe()));
    // Best effort: the stream does not wait for the bookkeeping.
    let pool = s.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = store::record_connect(&pool, &q.instance).await {
            tracing::warn!(error = %e, instance = %q.instance, "could not record a watch connection");
        }
    });
    let mut response = Body::from_stream(watch::stream(hub, revoked, s.drained())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /v1/config/acks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    instance: String,
    /// The version applied or refused (>= 1).
    version: i64,
    /// `ack`: applied and serving; `nack`: refused, the previous version keeps serving.
    status: AckStatus,
    /// Why it was refused (NACK only): at most 50 messages of at most 2,000 characters.
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum AckStatus {
    Ack,
    Nack,
}

impl AckBody {
    fn check(&self) -> Result<(), Problem> {
        check_instance(&self.instance)?;
        let mut errors = Vec::new();
        if self.version < 1 {
            errors.push(FieldError::new("version", "must be >= 1"));
        }
        if self.errors.len() > 50 || self.errors.iter().any(|e| e.chars().count() > 2000) {
            errors.push(FieldError::new(
                "errors",
                "at most 50 messages of at most 2000 characters",
            ));
        }
        if self.status == AckStatus::Nack && self.errors.is_empty() {
            errors.push(FieldError::new("errors", "a NACK says why"));
        }
        if self.status == AckStatus::Ack && !self.errors.is_empty() {
            errors.push(FieldError::new("errors", "only a NACK has errors"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::invalid(errors))
        }
    }
}

#[utoipa::path(
    post, path = "/v1/config/acks", tag = "config",
    request_body(content = AckBody, example = json!({"instance": "proxy-8080", "version": 13, "status": "nack",
        "errors": ["config pushed by http://127.0.0.1:9300 v13:40:7: unknown tier `gold`"]})),
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, response = problems::MalformedJson),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Report a version applied (ACK) or refused (NACK).
async fn ack(
    _: Principal,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<AckBody>,
) -> Result<StatusCode, Problem> {
    body.check()?;
    let errors = (body.status == AckStatus::Nack).then_some(body.errors.as_slice());
    store::record_ack(&s.pool, &body.instance, body.version, errors).await?;
    if let Some(errors) = errors {
        tracing::warn!(instance = %body.instance, version = body.version, ?errors, "a proxy refused a config version");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/config/status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ConfigStatus {
    /// The version in force (none before the first one).
    version: Option<i64>,
    hash: Option<String>,
    /// Every proxy that watched or reported, by instance id.
    instances: Vec<InstanceStatus>,
}

#[utoipa::path(
    get, path = "/v1/config/status", tag = "config",
    responses((status = 200, description = "The version in force and what each proxy reported", body = ConfigStatus,
        example = json!({"version": 13, "hash": "51ab...", "instances": [{"instance": "proxy-8080", "acked_version": 12,
        "acked_at": "2026-11-29T21:40:02Z", "nacked_version": 13, "nack_errors": ["config pushed by http://127.0.0.1:9300 v13:40:7: unknown tier `gold`"],
        "nacked_at": "2026-11-29T21:41:10Z", "connected_at": "2026-11-29T21:30:00Z"}]})))
)]
/// Which proxy runs which version.
async fn status(
    _: Principal,
    State(s): State<ApiState>,
    Extension(hub): Extension<Arc<Hub>>,
) -> Result<Json<ConfigStatus>, Problem> {
    let cur = hub.current();
    Ok(Json(ConfigStatus {
        version: cur.as_ref().map(|c| c.version),
        hash: cur.map(|c| c.hash.clone()),
        instances: store::instances(&s.pool).await?,
    }))
}

/// `?limit=&before=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VersionsQuery {
    /// Page size, 1..=100 (default 50).
    limit: Option<u32>,
    /// The `next` cursor of the previous page: versions older than this one.
    before: Option<i64>,
}

#[utoipa::path(
    get, path = "/v1/config/versions", tag = "config", params(VersionsQuery),
    responses(
        (status = 200, description = "Versions, newest first", body = Page<VersionSummary>,
         example = json!({"items": [{"version": 13, "kind": "keys", "hash": "51ab...", "author": "config-server",
            "reason": "tenancy or flags changed", "keys_upserted": 1, "keys_removed": 0, "created_at": "2026-11-29T21:41:09Z"}], "next": "13"})),
        (status = 422, response = problems::Validation),
    )
)]
/// List config versions.
async fn versions(
    _: Principal,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<VersionsQuery>,
) -> Result<Json<Page<VersionSummary>>, Problem> {
    let limit = i64::from(q.limit.unwrap_or(50));
    if !(1..=100).contains(&limit) {
        return Err(Problem::field("limit", "must be 1..=100"));
    }
    let rows = store::list(&s.pool, limit + 1, q.before).await?;
    Ok(Json(Page::from_rows(rows, limit, |v| {
        v.version.to_string()
    })))
}

/// One version in full.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct VersionDetail {
    #[serde(flatten)]
    summary: VersionSummary,
    /// The YAML base in force at this version.
    base: String,
    /// The merged document (snapshot versions; a `keys` version is its parent plus `delta`).
    document: Option<String>,
    /// The key changes of this version: `{"upsert": [...], "remove": [...]}`.
    #[schema(value_type = Object)]
    delta: Value,
}

#[utoipa::path(
    get, path = "/v1/config/versions/{version}", tag = "config",
    params(("version" = i64, Path, description = "Version number")),
    responses(
        (status = 200, description = "The version, its base, document and key delta", body = VersionDetail,
         example = json!({"version": 12, "kind": "snapshot", "hash": "9f2c...", "author": "bootstrap-admin", "reason": "base updated",
            "keys_upserted": 0, "keys_removed": 0, "created_at": "2026-11-29T21:40:00Z",
            "base": "routes: ...", "document": "{...}", "delta": {"upsert": [], "remove": []}})),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Get one config version.
async fn version(
    _: Principal,
    State(s): State<ApiState>,
    Path(version): Path<String>,
) -> Result<Json<VersionDetail>, Problem> {
    let version: i64 = version
        .parse()
        .map_err(|_| Problem::field("version", format!("`{version}` is not a version number")))?;
    let row = store::get(&s.pool, version).await?;
    let count = |k: &str| {
        row.delta[k]
            .as_array()
            .map_or(0, |a| i32::try_from(a.len()).unwrap_or(i32::MAX))
    };
    Ok(Json(VersionDetail {
        summary: VersionSummary {
            version: row.version,
            kind: row.kind.clone(),
            hash: row.hash.clone(),
            author: row.author.clone(),
            reason: row.reason.clone(),
            keys_upserted: count("upsert"),
            keys_removed: count("remove"),
            created_at: row.created_at,
        },
        base: row.base,
        document: row.document,
        delta: row.delta,
    }))
}

#[utoipa::path(
    get, path = "/v1/config/base", tag = "config",
    responses(
        (status = 200, description = "The YAML base in force; its `ETag` is the version that set it", content_type = "application/yaml", body = String,
         example = json!("providers:\n  openai:\n    base_url: http://127.0.0.1:18001\n")),
        (status = 503, response = problems::Unavailable),
    )
)]
/// Get the YAML base.
async fn get_base(_: Principal, Extension(hub): Extension<Arc<Hub>>) -> Result<Response, Problem> {
    let cur = hub.current().ok_or(ConfigError::NoBase)?;
    let mut response = cur.structure.base.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
        .headers_mut()
        .insert(header::ETAG, crate::http::etag(cur.base_version));
    Ok(response)
}

/// `201 {"version": N}` (or `200` when nothing changed).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Published {
    version: i64,
}

#[utoipa::path(
    put, path = "/v1/config/base", tag = "config",
    request_body(content = String, content_type = "application/yaml", description = "The YAML base: providers, routes, tiers, limits, flags, \
base keys (no `extends`). Optional `If-Match` with the ETag of `GET /v1/config/base` (412 if another base was published since; key and tier changes do not count).",
        example = json!("providers:\n  openai:\n    base_url: http://127.0.0.1:18001\n    models: [gpt-4o-mini]\nroutes:\n  - name: openai\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n    filters: [{ kind: api-key }]\n")),
    responses(
        (status = 200, description = "Unchanged: the version in force", body = Published, example = json!({"version": 12})),
        (status = 201, description = "Published as a new version", body = Published, example = json!({"version": 13})),
        (status = 412, response = problems::PreconditionFailed),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, description = "The config does not validate: every error as `file:line:col: message`, as check-config prints them",
         body = crate::http::ProblemDetails, content_type = "application/problem+json",
         example = json!({"type": "https://leaky-tokens.dev/problems/validation", "title": "Invalid request", "status": 422,
            "detail": "the config does not validate (errors as check-config prints them)",
            "errors": [{"field": "document", "message": "base.yaml:7:13: `prefix` must start with `/`"}]})),
    )
)]
/// Replace the YAML base (validated, then pushed).
async fn put_base(
    p: Principal,
    Extension(hub): Extension<Arc<Hub>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), Problem> {
    check_yaml_type(&headers)?;
    let body = axum::body::to_bytes(body, MAX_BASE_BYTES)
        .await
        .map_err(|_| {
            Problem::new(
                ProblemKind::PayloadTooLarge,
                format!("the base exceeds {MAX_BASE_BYTES} bytes"),
            )
        })?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| Problem::field("document", "the base must be UTF-8 text"))?;
    if headers.contains_key(header::IF_MATCH) {
        let expected = crate::http::if_match(&headers)?;
        let current = hub.current().map_or(0, |c| c.base_version);
        if expected != current {
            return Err(Problem::new(
                ProblemKind::PreconditionFailed,
                format!("the base changed: its current ETag is \"{current}\""),
            ));
        }
    }
    let why = ("config.base", "base updated".to_owned());
    publish(&hub, text, &p.subject, why).await
}

fn check_yaml_type(headers: &HeaderMap) -> Result<(), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if matches!(
        media,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/plain"
    ) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            "send the base as application/yaml",
        ))
    }
}

async fn publish(
    hub: &Hub,
    base: String,
    author: &str,
    (action, reason): (&'static str, String),
) -> Result<(StatusCode, Json<Published>), Problem> {
    let before = hub.current().map(|c| c.version);
    let version = hub
        .publish(Publish {
            base: Some(base),
            author: author.to_owned(),
            reason,
            audit: Some(action),
        })
        .await?
        .ok_or(ConfigError::NoBase)?;
    let status = if Some(version) == before {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(Published { version })))
}

/// `POST /v1/config/rollback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The version whose base to republish.
    version: i64,
}

#[utoipa::path(
    post, path = "/v1/config/rollback", tag = "config",
    request_body(content = RollbackBody, example = json!({"version": 12})),
    responses(
        (status = 200, description = "Version N's base is already in force", body = Published, example = json!({"version": 14})),
        (status = 201, description = "Version N's base republished as a new version. Keys, orgs, tiers and flags \
are not rolled back (a rollback never revives a revoked key)", body = Published, example = json!({"version": 15})),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Roll the YAML base back to a version's.
async fn rollback(
    p: Principal,
    State(s): State<ApiState>,
    Extension(hub): Extension<Arc<Hub>>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<(StatusCode, Json<Published>), Problem> {
    let row = store::get(&s.pool, body.version).await?;
    let reason = format!("rollback to version {}", body.version);
    publish(&hub, row.base, &p.subject, ("config.rollback", reason)).await
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(
    watch_config,
    ack,
    status,
    versions,
    version,
    get_base,
    put_base,
    rollback
))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/config/watch", get(watch_config))
        .route("/config/acks", post(ack))
        .route("/config/status", get(status))
        .route("/config/versions", get(versions))
        .route("/config/versions/{version}", get(version))
        .route(
            "/config/base",
            get(get_base)
                .put(put_base)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/config/rollback", post(rollback))
}
