//! Bounded context "eureka": Netflix Eureka's REST API under `/eureka` (register, renew, cancel, status
//! override, full and delta fetches), so existing Eureka clients (Spring Cloud Netflix,
//! `py_eureka_client`) register with the control plane and discover gateway instances. It owns no
//! tables: instances live in the registry ([`crate::registry::apps`]), one truth with
//! `/v1/registry/instances`, shared by every replica. Gateway instances appear under the apps
//! `LEAKY-PROXY`, `LEAKY-CONTROL-PLANE` and `LEAKY-ANALYTICS`.
//!
//! Differences from a Netflix Eureka server, on purpose: no peer replication (replicas share
//! Postgres instead); `/apps/delta` returns the full set (every instance `ADDED`) with the registry's
//! revision as `versions__delta` and Eureka's `apps__hashcode`, which clients reconcile against; and an
//! instance past its lease is listed `DOWN` until it expires (10 min) rather than evicted at once.

mod examples;
mod model;
mod wire;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::OpenApi;

use crate::apidoc::problems;
use crate::http::{ApiJson, ApiQuery, ApiState, FieldError, Problem, ProblemKind};
use crate::registry::apps::{self, check_app};
use wire::{reply, EurekaCaller};

/// `POST /eureka/apps/{app}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    /// Eureka's instance object. Read: `instanceId` (default `hostName`), `hostName`, `app`, `ipAddr`,
    /// `status`, `port`, `securePort`, `leaseInfo.durationInSecs`, `metadata.version`; the rest is
    /// stored and served back as sent.
    #[schema(value_type = Object)]
    instance: Map<String, Value>,
}

/// `PUT /eureka/apps/{app}/{id}` query (Eureka clients send these; other parameters are ignored).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RenewQuery {
    /// The status the instance reports now: `UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`, `UNKNOWN`.
    status: Option<String>,
}

/// `PUT /eureka/apps/{app}/{id}/status` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// The status to show instead of the instance's own (e.g. `OUT_OF_SERVICE`).
    value: Option<String>,
}

/// The app name of a path, upper-cased as Eureka does; 422 naming `app` when it is not one.
fn app_name(raw: &str) -> Result<String, Problem> {
    let app = raw.to_ascii_uppercase();
    check_app("app", &app).map_err(|e| Problem::invalid(vec![e]))?;
    Ok(app)
}

/// A path's instance id: 1..=128 characters without control characters or `/`.
fn instance_id(raw: &str) -> Result<&str, Problem> {
    let ok = !raw.is_empty() && raw.len() <= 128 && !raw.chars().any(char::is_control);
    if ok {
        Ok(raw)
    } else {
        Err(Problem::field("id", "must be 1 to 128 characters"))
    }
}

/// A Eureka status from a query parameter `field`.
fn eureka_status(field: &str, raw: &str) -> Result<String, Problem> {
    if model::STATUSES.contains(&raw) {
        Ok(raw.to_owned())
    } else {
        let message = format!("must be one of {}", model::STATUSES.join(", "));
        Err(Problem::invalid(vec![FieldError::new(field, message)]))
    }
}

#[utoipa::path(
    post, path = "/eureka/apps/{app}", tag = "eureka", operation_id = "eureka_register",
    params(("app" = String, Path, description = "Application name (case-insensitive; stored upper case)")),
    request_body(content = RegisterBody, example = json!(examples::registration())),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 204, description = "Registered (or re-registered: the instance replaced)"),
        (status = 400, response = problems::MalformedJson),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Register an instance of `app` (Eureka's register).
async fn register(
    EurekaCaller(caller): EurekaCaller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<StatusCode, Problem> {
    let app = app_name(&app)?;
    let registration = model::registration(&app, body.instance)?;
    apps::register_app(&s.pool, &caller.subject, &registration, s.clock.now())
        .await
        .map_err(model::eureka_fields)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    put, path = "/eureka/apps/{app}/{id}", tag = "eureka", operation_id = "eureka_renew",
    params(("app" = String, Path, description = "Application name"), ("id" = String, Path, description = "Instance id"), RenewQuery),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "Renewed (empty body, as Eureka answers)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Renew an instance's lease (Eureka's heartbeat). 404 when it is not registered: register again.
async fn renew(
    _: EurekaCaller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RenewQuery>,
) -> Result<StatusCode, Problem> {
    let app = app_name(&app)?;
    let status = q.status.map(|v| eureka_status("status", &v)).transpose()?;
    let now = s.clock.now();
    apps::heartbeat_app(&s.pool, &app, instance_id(&id)?, status.as_deref(), now).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    delete, path = "/eureka/apps/{app}/{id}", tag = "eureka", operation_id = "eureka_cancel",
    params(("app" = String, Path, description = "Application name"), ("id" = String, Path, description = "Instance id")),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "Cancelled (empty body, as Eureka answers)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Cancel an instance's registration (Eureka's cancel).
async fn cancel(
    EurekaCaller(caller): EurekaCaller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let app = app_name(&app)?;
    apps::cancel_app(&s.pool, &caller.subject, &app, instance_id(&id)?).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    put, path = "/eureka/apps/{app}/{id}/status", tag = "eureka", operation_id = "eureka_set_status",
    params(("app" = String, Path, description = "Application name"), ("id" = String, Path, description = "Instance id"), StatusQuery),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "Override set (empty body, as Eureka answers)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Override the status Eureka shows for an instance (`?value=OUT_OF_SERVICE` takes it out of rotation).
async fn set_status(
    EurekaCaller(caller): EurekaCaller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Result<StatusCode, Problem> {
    let app = app_name(&app)?;
    let raw = q
        .value
        .ok_or_else(|| Problem::field("value", "required, e.g. OUT_OF_SERVICE"))?;
    let value = eureka_status("value", &raw)?;
    let id = instance_id(&id)?;
    apps::set_status_override(&s.pool, &caller.subject, &app, id, Some(&value)).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    delete, path = "/eureka/apps/{app}/{id}/status", tag = "eureka", operation_id = "eureka_clear_status",
    params(("app" = String, Path, description = "Application name"), ("id" = String, Path, description = "Instance id")),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "Override removed (empty body, as Eureka answers)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Remove a status override: the instance's own status shows again.
async fn clear_status(
    EurekaCaller(caller): EurekaCaller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let app = app_name(&app)?;
    let id = instance_id(&id)?;
    apps::set_status_override(&s.pool, &caller.subject, &app, id, None).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    get, path = "/eureka/apps", tag = "eureka", operation_id = "eureka_list",
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "Every application and its instances (JSON with `Accept: application/json`, else XML)",
         content(
            (Object = "application/json", example = json!(examples::applications())),
            (String = "application/xml", example = json!(examples::applications_xml()))
         )),
    )
)]
/// Fetch the whole registry (Eureka's full fetch).
async fn list(
    _: EurekaCaller,
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let records = apps::records(&s.pool, None, None, s.clock.now()).await?;
    let revision = apps::revision(&s.pool).await?;
    Ok(reply(&headers, model::applications(&records, revision)))
}

#[utoipa::path(
    get, path = "/eureka/apps/delta", tag = "eureka", operation_id = "eureka_delta",
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "The changes since the last fetch: here always the full set, every instance `ADDED`, \
                                      with `versions__delta` and `apps__hashcode` for the client to reconcile",
         content(
            (Object = "application/json", example = json!(examples::applications())),
            (String = "application/xml", example = json!(examples::applications_xml()))
         )),
    )
)]
/// Fetch the registry's changes (Eureka's delta fetch).
async fn delta(
    caller: EurekaCaller,
    state: State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    list(caller, state, headers).await
}

#[utoipa::path(
    get, path = "/eureka/apps/{app}", tag = "eureka", operation_id = "eureka_app",
    params(("app" = String, Path, description = "Application name")),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "The application and its instances (JSON or XML)",
         content(
            (Object = "application/json", example = json!(examples::application())),
            (String = "application/xml", example = json!(examples::application_xml()))
         )),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Fetch one application.
async fn app(
    _: EurekaCaller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let app = app_name(&app)?;
    let records = apps::records(&s.pool, Some(&app), None, s.clock.now()).await?;
    if records.is_empty() {
        let detail = format!("app `{app}` has no instances");
        return Err(Problem::new(ProblemKind::NotFound, detail));
    }
    Ok(reply(&headers, model::application(&app, &records)))
}

#[utoipa::path(
    get, path = "/eureka/apps/{app}/{id}", tag = "eureka", operation_id = "eureka_instance",
    params(("app" = String, Path, description = "Application name"), ("id" = String, Path, description = "Instance id")),
    security(("admin_token" = []), ("eureka_basic" = [])),
    responses(
        (status = 200, description = "The instance (JSON or XML)",
         content(
            (Object = "application/json", example = json!({"instance": examples::instance()})),
            (String = "application/xml", example = json!(examples::instance_xml()))
         )),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Fetch one instance.
async fn instance(
    _: EurekaCaller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let app = app_name(&app)?;
    let id = instance_id(&id)?;
    let records = apps::records(&s.pool, Some(&app), Some(id), s.clock.now()).await?;
    let Some(record) = records.first() else {
        let detail = format!("instance `{id}` of app `{app}` is not registered");
        return Err(Problem::new(ProblemKind::NotFound, detail));
    };
    let doc = serde_json::json!({"instance": model::instance(record)});
    Ok(reply(&headers, doc))
}

/// The OpenAPI paths of these routes, with the Basic security scheme they also accept.
#[derive(OpenApi)]
#[openapi(
    paths(list, delta, register, app, instance, renew, cancel, set_status, clear_status),
    modifiers(&BasicAuth)
)]
struct Doc;

struct BasicAuth;

impl utoipa::Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Basic)
            .description(Some(
                "Eureka routes only: HTTP Basic with the admin token as the password (any user), \
                 as Eureka clients send credentials from the server URL \
                 (`http://admin:<token>@127.0.0.1:9300/eureka`).",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("eureka_basic", SecurityScheme::Http(scheme));
    }
}

/// The OpenAPI paths of the Eureka routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The Eureka API (mounted under `/eureka`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/apps", get(list))
        // py_eureka_client fetches `{server}/apps/`, with the slash.
        .route("/apps/", get(list))
        .route("/apps/delta", get(delta))
        .route("/apps/{app}", post(register).get(app))
        .route("/apps/{app}/{id}", put(renew).delete(cancel).get(instance))
        .route(
            "/apps/{app}/{id}/status",
            put(set_status).delete(clear_status),
        )
}
