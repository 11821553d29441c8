//! Who calls the admin API: the bootstrap bearer token (`LEAKY_ADMIN_TOKEN`, a `platform-admin`) or
//! an access token of this control plane's own authorization server, verified by the RBAC layer in
//! `identity::rbac` (which also decides what the [`Principal`] may do; this module stays below it).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::{ApiState, Problem, ProblemKind};

/// The scope the bootstrap admin token grants: everything.
pub const SCOPE_ADMIN: &str = "admin";

/// The role the bootstrap admin token holds (`identity::rbac::Role::PlatformAdmin`'s name).
pub const ROLE_PLATFORM_ADMIN: &str = "platform-admin";

/// The bootstrap admin credential.
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `presented` is this token (constant time). An empty token is no token: nothing
    /// matches it (a control plane without a bootstrap token).
    pub fn matches(&self, presented: &str) -> bool {
        // Constant time over the bytes; only the length may leak, and that is public (docs).
        !self.0.is_empty()
            && presented.len() == self.0.len()
            && bool::from(presented.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// An authenticated caller: its subject (written to the audit log), its scopes, and what RBAC
/// (`identity::rbac`, which this edge layer does not depend on) decides on: its org (`None` for
/// platform principals) and its role names.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    pub org: Option<String>,
    pub roles: Vec<String>,
}

impl Principal {
    /// The bootstrap admin token's caller: `platform-admin` (dev and tests rely on it).
    pub fn bootstrap() -> Self {
        Self {
            subject: "bootstrap-admin".to_owned(),
            scopes: vec![SCOPE_ADMIN.to_owned()],
            org: None,
            roles: vec![ROLE_PLATFORM_ADMIN.to_owned()],
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == SCOPE_ADMIN)
    }
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = Problem;

    /// A principal the admin API's RBAC layer already authenticated (the bootstrap token or an
    /// access token of this control plane's authorization server: `identity::rbac::enforce`), else
    /// the bootstrap token itself (routes outside that layer).
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        match bearer(parts) {
            Some(token) if state.admin.matches(token) => Ok(Principal::bootstrap()),
            Some(_) => Err(Problem::new(
                ProblemKind::Unauthorized,
                "invalid bearer token",
            )),
            None => Err(missing_bearer()),
        }
    }
}

/// The `Authorization: Bearer` token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The 401 for a request without a bearer token.
pub fn missing_bearer() -> Problem {
    Problem::new(
        ProblemKind::Unauthorized,
        "missing `Authorization: Bearer <token>`",
    )
}
