//! The admin API's OpenAPI 3.1 document, generated from the handlers (`#[utoipa::path]` in each bounded
//! context) and served at `GET /openapi.json`. `control-plane/openapi.json` is this document,
//! committed; `tests/openapi.rs` fails when the two differ.
//!
//! Every `/v1` route answers 401 (the auth extractor), 503 (migrations pending or Postgres down) and
//! 500; `CommonProblems` adds those to every operation, so handlers list only their own problem
//! responses, each one of [`apidoc::problems`]: `application/problem+json` with an example built by
//! [`Problem`] itself.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::Ref;
use utoipa::{Modify, OpenApi};

use crate::http::{FieldError, Problem, ProblemDetails, ProblemKind};
use crate::identity::rbac;
use crate::{
    apidoc, audit, billing, config, eureka, flags, identity, ledger, notify, registry, tenancy,
};

/// Name of the bearer security scheme in the document.
pub const SECURITY_SCHEME: &str = "admin_token";

/// The root document: metadata, tags, security and the shared problem schemas and responses.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Leaky Tokens control plane",
        description = "Admin API of the Leaky Tokens control plane: orgs, users, tiers, API keys, the audit log, \
                       the service registry and its Eureka API, feature flags and the config server. Errors are RFC 9457 `application/problem+json`."
    ),
    security(("admin_token" = [])),
    tags(
        (name = "tenancy", description = "Orgs, their users, tiers and API keys (bounded context `tenancy`)."),
        (name = "audit", description = "Who changed what, when (bounded context `audit`)."),
        (name = "registry", description = "Live instances: registration, heartbeats, up/down (bounded context `registry`)."),
        (name = "config", description = "The config server: versions, the YAML base, rollback, the watch stream proxies hold and their ACK/NACK (bounded context `config`; protocol in docs/config-protocol.md)."),
        (name = "flags", description = "Feature flags: on/off, percentage rollouts, per-org overrides; pushed to the proxies in the config snapshot (bounded context `flags`)."),
        (name = "billing", description = "Token purchases run as persisted sagas (authorize, credit, raise the balance, capture; compensations in reverse), plans and subscriptions (subscribe, upgrade, renew as sagas of the same engine), the sagas with their step history, and the payment provider's webhooks (bounded context `billing`)."),
        (name = "ledger", description = "Each org's token account: an event-sourced ledger of purchases, grants, consumption, refunds and expiries, with its balance (bounded context `ledger`)."),
        (name = "usage", description = "Usage analytics: an org's tokens and requests over time by model, key or provider, and its top keys (served by the analytics service, issue 16; docs/analytics.md)."),
        (name = "notify", description = "Notifications to org admins: HMAC-signed webhooks with retries, and email (bounded context `notify`)."),
        (name = "identity", description = "The OAuth2 authorization server's admin side: clients (`client_credentials`, secrets shown once), token signing keys with their rotation, and the write-only vault of provider credentials (`/v1/provider-credentials`, encrypted at rest, referenced by the config base as `${secret:<name>}`) (bounded context `identity`; the protocol endpoints `/oauth2/*` and `/.well-known/*` are described by the discovery document, docs/identity.md)."),
        (name = "eureka", description = "Netflix Eureka's REST API under `/eureka` over the same registry, for Eureka clients \
                                         (bearer token or HTTP Basic with the admin token as password).")
    ),
    components(
        schemas(ProblemDetails, FieldError),
        responses(
            apidoc::problems::Validation,
            apidoc::problems::MalformedJson,
            apidoc::problems::PayloadTooLarge,
            apidoc::problems::UnsupportedMediaType,
            apidoc::problems::Unauthorized,
            apidoc::problems::NotFound,
            apidoc::problems::Conflict,
            apidoc::problems::PreconditionFailed,
            apidoc::problems::PreconditionRequired,
            apidoc::problems::Unavailable,
            apidoc::problems::Internal,
            apidoc::problems::InvalidSignature
        )
    ),
    modifiers(&BearerAuth, &CommonProblems)
)]
struct ApiDoc;

/// The whole document: the root merged with each context's paths.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(tenancy::openapi());
    doc.merge(audit::openapi());
    doc.merge(registry::openapi());
    doc.merge(config::openapi());
    doc.merge(flags::openapi());
    doc.merge(eureka::openapi());
    doc.merge(billing::openapi());
    doc.merge(ledger::openapi());
    doc.merge(notify::openapi());
    doc.merge(identity::api::openapi());
    doc.merge(identity::provider_credentials::openapi());
    doc.merge(crate::usage::openapi());
    doc.merge(crate::statements::openapi());
    // Modifiers ran before the merge; run them again over the merged paths.
    BearerAuth.modify(&mut doc);
    CommonProblems.modify(&mut doc);
    RbacSecurity.modify(&mut doc);
    doc
}

/// [`spec`] as pretty JSON with a trailing newline: exactly the bytes of `control-plane/openapi.json`.
pub fn spec_json() -> Result<String, serde_json::Error> {
    let mut json = spec().to_pretty_json()?;
    json.push('\n');
    Ok(json)
}

/// `GET /openapi.json` (no auth).
pub async fn serve_spec() -> Response {
    match spec_json() {
        Ok(json) => {
            let mut response = json.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "serialize the OpenAPI document");
            Problem::new(ProblemKind::Internal, "internal error").into_response()
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`Authorization: Bearer <token>`: an access token of this control plane's \
                 authorization server for the admin audience (`POST /oauth2/token`, \
                 `client_credentials`), carrying `org` and `roles`; or the bootstrap admin token \
                 (`LEAKY_ADMIN_TOKEN`, platform-admin). Each operation lists the permission it needs.",
            ))
            .build();
        components.add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// `security` per operation rendered from the RBAC table ([`identity::rbac::OPERATIONS`]): the bearer
/// scheme with the permission as its one "scope" (OpenAPI 3.1 lets non-OAuth schemes name roles
/// there), and the permission and tenancy named in the description.
struct RbacSecurity;

impl Modify for RbacSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("GET", &mut item.get),
                ("PUT", &mut item.put),
                ("POST", &mut item.post),
                ("DELETE", &mut item.delete),
                ("PATCH", &mut item.patch),
            ];
            for (method, op) in operations {
                let Some(op) = op else { continue };
                let Some(entry) = rbac::lookup(method, path) else {
                    continue;
                };
                let rbac::Access::Rbac(permission, tenancy) = entry.access else {
                    continue;
                };
                let requirement = SecurityRequirement::new(SECURITY_SCHEME, [permission.as_str()]);
                op.security = Some(vec![requirement]);
                let note = rbac_note(permission, tenancy);
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                    _ => note,
                });
            }
        }
    }
}

/// The sentence each operation's description ends with.
fn rbac_note(permission: rbac::Permission, tenancy: rbac::Tenancy) -> String {
    let scope = match tenancy {
        rbac::Tenancy::Platform => "platform-wide: `platform-admin` only".to_owned(),
        rbac::Tenancy::PathOrg => {
            "org-scoped: `{org}` must be the token's `org` (else 403), platform-admin excepted"
                .to_owned()
        }
        rbac::Tenancy::Owned(_) => "org-scoped by the object's owning org: another org's \
             object is a 404, like a missing one (ids do not reveal existence)"
            .to_owned(),
    };
    format!("**Permission:** `{permission}` ({scope}).")
}

struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let common = [
            ("401", "Unauthorized"),
            ("500", "Internal"),
            ("503", "Unavailable"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                for (status, name) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
        }
    }
}
