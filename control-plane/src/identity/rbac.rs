//! Role-based access control for the admin API (issue 14, increment 2): the ONE table that says which
//! permission every admin operation needs and how its tenant is found, and the roles that hold each
//! permission.
//!
//! Keeping roles, permissions and operations in one place is what lets the OpenAPI spec render
//! `security` per operation from it and lets the enumeration test prove that no route escapes it: an
//! operation missing from [`OPERATIONS`] is refused by [`lookup`] (fail closed), not waved through.
//!
//! Tenant isolation (BOLA): an operation is either [`Tenancy::Platform`] (only `platform-admin` holds
//! its permission), [`Tenancy::PathOrg`] (the `{org}` path parameter must be the caller's org), or
//! [`Tenancy::Owned`] (the object addressed by id belongs to an org, looked up before the handler runs).
//! For owned objects of another org the answer is **404, not 403**: ids must not reveal that an object
//! exists elsewhere, so another org's key looks exactly like a key that never existed.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use sha2::{Digest, Sha256};

use super::{oauth, Identity};
use crate::http::{bearer, missing_bearer, ApiState, Principal, Problem, ProblemKind};
// The roles, their permissions and the grant of a principal: a module of their own so tenancy can
// check delegation without depending on identity.
pub use crate::roles::{check_delegation, grant, Grant, Permission, Role};

/// The kind of object an id-addressed route names; its owning org is looked up before the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// `tenancy.api_keys` by `{id}`.
    Key,
    /// `billing.purchases` by `{id}`.
    Purchase,
}

/// How an operation's tenant is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// Not about one org: platform permission, `platform-admin` only.
    Platform,
    /// The `{org}` path parameter.
    PathOrg,
    /// The owning org of the object the `{id}` path parameter names (another org's: 404).
    Owned(Owned),
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A bearer token holding `Permission` in `Tenancy`.
    Rbac(Permission, Tenancy),
    /// Authenticated another way, outside RBAC: the payment provider's signed webhook.
    Signed,
    /// The Eureka wire API: the admin token or Eureka basic auth (its own extractor).
    Eureka,
}

/// One admin operation: method, axum path template (as in the OpenAPI spec), and its access rule.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn op(method: &'static str, path: &'static str, access: Access) -> Operation {
    Operation {
        method,
        path,
        access,
    }
}

use Access::{Eureka, Rbac, Signed};
use Permission as P;
use Tenancy::{PathOrg, Platform};

const KEY: Tenancy = Tenancy::Owned(Owned::Key);
const PURCHASE: Tenancy = Tenancy::Owned(Owned::Purchase);

/// THE table: every admin operation. Paths are axum templates exactly as routed (and as in
/// `openapi.json`); the enumeration test walks the spec and fails on any operation missing here.
pub const OPERATIONS: &[Operation] = &[
    // tenancy: orgs and tiers
    op("GET", "/v1/orgs", Rbac(P::PlatformRead, Platform)),
    op("POST", "/v1/orgs", Rbac(P::PlatformWrite, Platform)),
    op("GET", "/v1/orgs/{org}", Rbac(P::OrgsRead, PathOrg)),
    op("PATCH", "/v1/orgs/{org}", Rbac(P::OrgsWrite, PathOrg)),
    // Deleting an org is not something the org's own admin may do.
    op("DELETE", "/v1/orgs/{org}", Rbac(P::PlatformWrite, Platform)),
    op("GET", "/v1/tiers", Rbac(P::PlatformRead, Platform)),
    op("GET", "/v1/tiers/{name}", Rbac(P::PlatformRead, Platform)),
    op("PUT", "/v1/tiers/{name}", Rbac(P::PlatformWrite, Platform)),
    op(
        "DELETE",
        "/v1/tiers/{name}",
        Rbac(P::PlatformWrite, Platform),
    ),
    // tenancy: keys
    op("GET", "/v1/orgs/{org}/keys", Rbac(P::KeysRead, PathOrg)),
    op("POST", "/v1/orgs/{org}/keys", Rbac(P::KeysWrite, PathOrg)),
    op("GET", "/v1/keys/{id}", Rbac(P::KeysRead, KEY)),
    op("PATCH", "/v1/keys/{id}", Rbac(P::KeysWrite, KEY)),
    op("DELETE", "/v1/keys/{id}", Rbac(P::KeysWrite, KEY)),
    op("POST", "/v1/keys/{id}/rotate", Rbac(P::KeysWrite, KEY)),
    // tenancy: users
    op("GET", "/v1/orgs/{org}/users", Rbac(P::UsersRead, PathOrg)),
    op("POST", "/v1/orgs/{org}/users", Rbac(P::UsersWrite, PathOrg)),
    op(
        "GET",
        "/v1/orgs/{org}/users/{user}",
        Rbac(P::UsersRead, PathOrg),
    ),
    op(
        "PATCH",
        "/v1/orgs/{org}/users/{user}",
        Rbac(P::UsersWrite, PathOrg),
    ),
    op(
        "DELETE",
        "/v1/orgs/{org}/users/{user}",
        Rbac(P::UsersWrite, PathOrg),
    ),
    // identity: a user's password (the user must be of `{org}`: another org's is a 404)
    op(
        "PUT",
        "/v1/orgs/{org}/users/{user}/password",
        Rbac(P::UsersWrite, PathOrg),
    ),
    // audit
    op("GET", "/v1/audit", Rbac(P::AuditRead, Platform)),
    // registry
    op(
        "GET",
        "/v1/registry/instances",
        Rbac(P::RegistryRead, Platform),
    ),
    op(
        "PUT",
        "/v1/registry/instances/{id}",
        Rbac(P::RegistryWrite, Platform),
    ),
    op(
        "DELETE",
        "/v1/registry/instances/{id}",
        Rbac(P::RegistryWrite, Platform),
    ),
    op(
        "POST",
        "/v1/registry/instances/{id}/heartbeat",
        Rbac(P::RegistryWrite, Platform),
    ),
    // config server
    op("GET", "/v1/config/watch", Rbac(P::ConfigRead, Platform)),
    op("POST", "/v1/config/acks", Rbac(P::ConfigRead, Platform)),
    op("GET", "/v1/config/status", Rbac(P::ConfigRead, Platform)),
    op("GET", "/v1/config/versions", Rbac(P::ConfigRead, Platform)),
    op(
        "GET",
        "/v1/config/versions/{version}",
        Rbac(P::ConfigRead, Platform),
    ),
    op("GET", "/v1/config/base", Rbac(P::ConfigRead, Platform)),
    op("PUT", "/v1/config/base", Rbac(P::ConfigWrite, Platform)),
    op(
        "POST",
        "/v1/config/rollback",
        Rbac(P::ConfigWrite, Platform),
    ),
    // flags (a per-org override is still platform configuration, not the org's to set)
    op("GET", "/v1/flags", Rbac(P::FlagsRead, Platform)),
    op("GET", "/v1/flags/{name}", Rbac(P::FlagsRead, Platform)),
    op("PUT", "/v1/flags/{name}", Rbac(P::FlagsWrite, Platform)),
    op("DELETE", "/v1/flags/{name}", Rbac(P::FlagsWrite, Platform)),
    op(
        "PUT",
        "/v1/flags/{name}/orgs/{org}",
        Rbac(P::FlagsWrite, Platform),
    ),
    op(
        "DELETE",
        "/v1/flags/{name}/orgs/{org}",
        Rbac(P::FlagsWrite, Platform),
    ),
    op(
        "GET",
        "/v1/flags/{name}/evaluate",
        Rbac(P::FlagsRead, Platform),
    ),
    // eureka wire API
    op("GET", "/eureka/apps", Eureka),
    op("GET", "/eureka/apps/delta", Eureka),
    op("GET", "/eureka/apps/{app}", Eureka),
    op("POST", "/eureka/apps/{app}", Eureka),
    op("GET", "/eureka/apps/{app}/{id}", Eureka),
    op("PUT", "/eureka/apps/{app}/{id}", Eureka),
    op("DELETE", "/eureka/apps/{app}/{id}", Eureka),
    op("PUT", "/eureka/apps/{app}/{id}/status", Eureka),
    op("DELETE", "/eureka/apps/{app}/{id}/status", Eureka),
    // billing
    op(
        "GET",
        "/v1/orgs/{org}/purchases",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "POST",
        "/v1/orgs/{org}/purchases",
        Rbac(P::BillingWrite, PathOrg),
    ),
    op("GET", "/v1/purchases/{id}", Rbac(P::BillingRead, PURCHASE)),
    op("GET", "/v1/sagas", Rbac(P::PlatformRead, Platform)),
    op("POST", "/v1/webhooks/payments", Signed),
    op("GET", "/v1/plans", Rbac(P::PlatformRead, Platform)),
    op("GET", "/v1/plans/{name}", Rbac(P::PlatformRead, Platform)),
    op("PUT", "/v1/plans/{name}", Rbac(P::PlatformWrite, Platform)),
    op(
        "GET",
        "/v1/orgs/{org}/subscription",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "POST",
        "/v1/orgs/{org}/subscription",
        Rbac(P::BillingWrite, PathOrg),
    ),
    op(
        "PATCH",
        "/v1/orgs/{org}/subscription",
        Rbac(P::BillingWrite, PathOrg),
    ),
    op(
        "DELETE",
        "/v1/orgs/{org}/subscription",
        Rbac(P::BillingWrite, PathOrg),
    ),
    // usage analytics (issue 16): the org's own numbers, read like its billing.
    op("GET", "/v1/orgs/{org}/usage", Rbac(P::BillingRead, PathOrg)),
    op(
        "GET",
        "/v1/orgs/{org}/usage/top-keys",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "GET",
        "/v1/orgs/{org}/anomalies",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "GET",
        "/v1/orgs/{org}/statements",
        Rbac(P::BillingRead, PathOrg),
    ),
    // ledger: balance and history are the org's to read; grants create credit, a platform act.
    op(
        "GET",
        "/v1/orgs/{org}/balance",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "GET",
        "/v1/orgs/{org}/ledger",
        Rbac(P::BillingRead, PathOrg),
    ),
    op(
        "POST",
        "/v1/orgs/{org}/grants",
        Rbac(P::PlatformWrite, Platform),
    ),
    // notifications
    op(
        "GET",
        "/v1/orgs/{org}/webhooks",
        Rbac(P::NotifyRead, PathOrg),
    ),
    op(
        "POST",
        "/v1/orgs/{org}/webhooks",
        Rbac(P::NotifyWrite, PathOrg),
    ),
    op(
        "DELETE",
        "/v1/orgs/{org}/webhooks/{id}",
        Rbac(P::NotifyWrite, PathOrg),
    ),
    op(
        "GET",
        "/v1/orgs/{org}/notification-settings",
        Rbac(P::NotifyRead, PathOrg),
    ),
    op(
        "PUT",
        "/v1/orgs/{org}/notification-settings",
        Rbac(P::NotifyWrite, PathOrg),
    ),
    // identity
    op(
        "GET",
        "/v1/identity/clients",
        Rbac(P::IdentityAdmin, Platform),
    ),
    op(
        "POST",
        "/v1/identity/clients",
        Rbac(P::IdentityAdmin, Platform),
    ),
    op(
        "DELETE",
        "/v1/identity/clients/{id}",
        Rbac(P::IdentityAdmin, Platform),
    ),
    op("GET", "/v1/identity/keys", Rbac(P::IdentityAdmin, Platform)),
    op(
        "POST",
        "/v1/identity/keys/rotate",
        Rbac(P::IdentityAdmin, Platform),
    ),
    // identity: provider credentials (write-only vault)
    op(
        "GET",
        "/v1/provider-credentials",
        Rbac(P::IdentityAdmin, Platform),
    ),
    op(
        "PUT",
        "/v1/provider-credentials/{name}",
        Rbac(P::IdentityAdmin, Platform),
    ),
    op(
        "DELETE",
        "/v1/provider-credentials/{name}",
        Rbac(P::IdentityAdmin, Platform),
    ),
];

/// The table entry for `method` on the axum path template `path`; `None` means "not in the table",
/// which the enforcement point refuses (fail closed).
pub fn lookup(method: &str, path: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.method.eq_ignore_ascii_case(method) && o.path == path)
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 403: the permission is missing, or the `{org}` is another org's.
    Forbidden(String),
    /// 404: the addressed object belongs to another org (or does not exist); ids do not leak.
    Hidden,
}

/// Decides `grant` against `permission` in a tenant. `target_org` is the `{org}` path parameter
/// ([`Tenancy::PathOrg`]) or the owning org of the addressed object ([`Tenancy::Owned`], `None` when
/// there is no such object); it is ignored for [`Tenancy::Platform`].
pub fn decide(
    grant: &Grant,
    permission: Permission,
    tenancy: Tenancy,
    target_org: Option<&str>,
) -> Decision {
    if grant.is_platform_admin() {
        return Decision::Allow;
    }
    let same_org = matches!((grant.org.as_deref(), target_org), (Some(a), Some(b)) if a == b);
    match tenancy {
        // An object that is not the caller's is indistinguishable from a missing one, checked before
        // the permission so a member without `keys:write` learns nothing about other orgs' ids either.
        Tenancy::Owned(_) if !same_org => Decision::Hidden,
        Tenancy::PathOrg if !same_org => {
            Decision::Forbidden("the path's org is not the caller's".into())
        }
        _ if !grant.has(permission) => {
            Decision::Forbidden(format!("missing permission `{permission}`"))
        }
        _ => Decision::Allow,
    }
}

/// The one enforcement point: a `route_layer` on the admin API. It finds the operation by method
/// and [`MatchedPath`] (an unlisted one is refused with 405: fail closed), authenticates the caller
/// (401), resolves the tenant and applies [`decide`] (403, or 404 for another org's object), then
/// leaves the [`Principal`] in the request for the handler.
pub async fn enforce(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let (mut parts, body) = request.into_parts();
    // Under `nest("/v1", ..)` axum's `MatchedPath` is the full template, as the table has it.
    let operation = parts
        .extensions
        .get::<MatchedPath>()
        .and_then(|m| lookup(parts.method.as_str(), m.as_str()));
    let (permission, tenancy) = match operation.map(|o| o.access) {
        Some(Access::Rbac(permission, tenancy)) => (permission, tenancy),
        // Authenticated by their own means (a signature, Eureka's Basic auth) in the handler.
        Some(Access::Signed | Access::Eureka) => {
            return Ok(next.run(Request::from_parts(parts, body)).await)
        }
        // No entry for this method on a routed path: almost always a method the path does not have,
        // which axum would answer 405. A mounted handler missing from the table lands here too and
        // must not run unchecked, so it gets the same 405 (fail closed); the unit test over the
        // committed spec and the spec-vs-router test keep that from reaching a release.
        None => return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    };
    let principal = authenticate(&parts, &state).await?;
    let grant = grant(&principal);
    let target = if grant.is_platform_admin() {
        None
    } else {
        let params = RawPathParams::from_request_parts(&mut parts, &state)
            .await
            .map_err(|_| Problem::new(ProblemKind::NotFound, "no such route"))?;
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        };
        target_org(&state, tenancy, param("org"), param("id")).await?
    };
    match decide(&grant, permission, tenancy, target.as_deref()) {
        Decision::Allow => {}
        Decision::Forbidden(why) => return Err(Problem::new(ProblemKind::Forbidden, why)),
        Decision::Hidden => return Err(Problem::new(ProblemKind::NotFound, "not found")),
    }
    parts.extensions.insert(principal);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The bootstrap token (`platform-admin`), an API key granted admin roles (its org only), or an access
/// token of this authorization server for the admin audience (without identity running, not that).
async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Principal, Problem> {
    let token = bearer(parts).ok_or_else(missing_bearer)?;
    if state.admin.matches(token) {
        return Ok(Principal::bootstrap());
    }
    if token.starts_with(API_KEY_PREFIX) {
        return key_principal(state, token).await;
    }
    let verified = match parts.extensions.get::<Arc<Identity>>() {
        Some(identity) => oauth::admin_principal(identity, token).await?,
        None => None,
    };
    verified.ok_or_else(|| Problem::new(ProblemKind::Unauthorized, "invalid bearer token"))
}

/// How every API key starts (`lt-<prefix>_<secret>`); other bearers are tokens.
const API_KEY_PREFIX: &str = "lt-";

/// The principal of an API key on the admin API: exactly the admin roles it was granted, in its own
/// org. A key granted none is a data-plane credential only (403: it is a valid key, just not an admin
/// one); an unknown, revoked or expired key is 401 like any invalid token.
async fn key_principal(state: &ApiState, key: &str) -> Result<Principal, Problem> {
    // Tenancy's table read directly (as `target_org` does): tenancy depends on this module for
    // `check_delegation`, so this one must not depend on tenancy. Only the key's SHA-256 is stored.
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let found: Option<(Uuid, Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT id, org_id, admin_roles FROM tenancy.api_keys WHERE key_sha256 = $1
           AND (revoked_at IS NULL OR revoked_at > now()) AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(digest.as_slice())
    .fetch_optional(&state.pool)
    .await?;
    let Some((id, org, roles)) = found else {
        return Err(Problem::new(
            ProblemKind::Unauthorized,
            "invalid bearer token",
        ));
    };
    if roles.is_empty() {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            "this API key has no admin roles (grant them at creation with `admin_roles`)",
        ));
    }
    Ok(Principal {
        subject: format!("api-key:{id}"),
        scopes: Vec::new(),
        org: Some(org.to_string()),
        roles,
    })
}

/// The org an operation is about, in canonical UUID text so `{org}` spelled in upper case still
/// compares equal to the token's `org`.
async fn target_org(
    state: &ApiState,
    tenancy: Tenancy,
    org: Option<String>,
    id: Option<String>,
) -> Result<Option<String>, Problem> {
    let canonical = |raw: String| match Uuid::parse_str(&raw) {
        Ok(u) => u.to_string(),
        Err(_) => raw,
    };
    let sql = match tenancy {
        Tenancy::Platform => return Ok(None),
        Tenancy::PathOrg => return Ok(org.map(canonical)),
        Tenancy::Owned(Owned::Key) => "SELECT org_id FROM tenancy.api_keys WHERE id = $1",
        Tenancy::Owned(Owned::Purchase) => "SELECT org_id FROM billing.purchases WHERE id = $1",
    };
    // A malformed id names no object: the same 404 as another org's.
    let Some(id) = id.and_then(|i| Uuid::parse_str(&i).ok()) else {
        return Ok(None);
    };
    let owner: Option<Uuid> = sqlx::query_scalar(sql)
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
    Ok(owner.map(|u| u.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn grant(org: Option<&str>, roles: &[Role]) -> Grant {
        Grant {
            org: org.map(str::to_owned),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn the_table_has_one_entry_per_operation() {
        for (i, a) in OPERATIONS.iter().enumerate() {
            for b in &OPERATIONS[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "duplicate {} {}",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn platform_permissions_are_held_by_platform_admin_only() {
        for o in OPERATIONS {
            if let Access::Rbac(p, Tenancy::Platform) = o.access {
                for r in Role::ALL {
                    let holds = r.permissions().contains(&p);
                    assert_eq!(holds, r == Role::PlatformAdmin, "{r} / {p} ({})", o.path);
                }
            }
        }
    }

    #[test]
    fn org_scoped_operations_name_their_org() {
        for o in OPERATIONS {
            match o.access {
                Access::Rbac(_, Tenancy::PathOrg) => {
                    assert!(o.path.contains("{org}"), "{}", o.path)
                }
                Access::Rbac(_, Tenancy::Owned(_)) => {
                    assert!(o.path.contains("{id}"), "{}", o.path)
                }
                _ => {}
            }
        }
    }

    #[test]
    fn role_names_round_trip_and_unknown_names_map_to_nothing() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            Role::parse(crate::http::ROLE_PLATFORM_ADMIN),
            Some(Role::PlatformAdmin)
        );
        let mut p = Principal::bootstrap();
        p.roles.push("wizard".into());
        assert_eq!(super::grant(&p).roles, vec![Role::PlatformAdmin]);
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Role::parse("Platform-Admin"), None);
    }

    #[test]
    fn platform_admin_passes_everything() {
        let g = grant(None, &[Role::PlatformAdmin]);
        for o in OPERATIONS {
            if let Access::Rbac(p, t) = o.access {
                assert_eq!(decide(&g, p, t, Some("other")), Decision::Allow);
            }
        }
    }

    #[test]
    fn org_admin_is_confined_to_its_org() {
        let g = grant(Some("acme"), &[Role::OrgAdmin]);
        let (w, path) = (Permission::KeysWrite, Tenancy::PathOrg);
        assert_eq!(decide(&g, w, path, Some("acme")), Decision::Allow);
        assert!(matches!(
            decide(&g, w, path, Some("globex")),
            Decision::Forbidden(_)
        ));
        let key = Tenancy::Owned(Owned::Key);
        assert_eq!(decide(&g, w, key, Some("acme")), Decision::Allow);
        assert_eq!(decide(&g, w, key, Some("globex")), Decision::Hidden);
        assert_eq!(decide(&g, w, key, None), Decision::Hidden);
        let platform = Tenancy::Platform;
        assert!(matches!(
            decide(&g, Permission::PlatformWrite, platform, None),
            Decision::Forbidden(_)
        ));
    }

    #[test]
    fn readers_cannot_write_and_billing_viewers_see_only_billing() {
        let member = grant(Some("acme"), &[Role::OrgMember]);
        let t = Tenancy::PathOrg;
        assert_eq!(
            decide(&member, Permission::KeysRead, t, Some("acme")),
            Decision::Allow
        );
        assert!(matches!(
            decide(&member, Permission::KeysWrite, t, Some("acme")),
            Decision::Forbidden(m) if m.contains("keys:write")
        ));
        let viewer = grant(Some("acme"), &[Role::BillingViewer]);
        assert_eq!(
            decide(&viewer, Permission::BillingRead, t, Some("acme")),
            Decision::Allow
        );
        for p in [
            Permission::BillingWrite,
            Permission::KeysRead,
            Permission::UsersRead,
        ] {
            assert!(matches!(
                decide(&viewer, p, t, Some("acme")),
                Decision::Forbidden(_)
            ));
        }
    }

    #[test]
    fn a_principal_without_an_org_gets_nothing_org_scoped() {
        let g = grant(None, &[Role::OrgAdmin]);
        assert!(matches!(
            decide(&g, Permission::OrgsRead, Tenancy::PathOrg, Some("acme")),
            Decision::Forbidden(_)
        ));
    }

    #[test]
    fn lookup_is_by_method_and_template_and_unknown_routes_are_absent() {
        let o = lookup("get", "/v1/keys/{id}").expect("listed");
        assert_eq!(
            o.access,
            Access::Rbac(Permission::KeysRead, Tenancy::Owned(Owned::Key))
        );
        assert!(lookup("GET", "/v1/keys/123").is_none());
        assert!(lookup("POST", "/v1/brand-new").is_none());
    }

    #[test]
    fn every_operation_of_the_committed_spec_is_in_the_table_and_back() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).unwrap();
        let mut seen = 0;
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    assert!(
                        lookup(method, path).is_some(),
                        "{method} {path} has no entry"
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, OPERATIONS.len(), "table entries not in the spec");
    }
}
