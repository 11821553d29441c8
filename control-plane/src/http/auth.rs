//! Who calls the admin API. Today one bootstrap bearer token (`LEAKY_ADMIN_TOKEN`); the [`Principal`]
//! it yields already carries scopes, so OAuth2 access tokens (issue 14) drop in as another way to build
//! one without touching handlers.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::{ApiState, Problem, ProblemKind};
use crate::identity::rbac::{Grant, Role};

/// The scope the bootstrap admin token grants: everything.
pub const SCOPE_ADMIN: &str = "admin";

/// The bootstrap admin credential.
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `presented` is this token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        // Constant time over the bytes; only the length may leak, and that is public (docs).
        presented.len() == self.0.len() && bool::from(presented.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// An authenticated caller: its subject (written to the audit log), its scopes, and what RBAC
/// decides on: its org (`None` for platform principals) and its roles
/// ([`crate::identity::rbac`]).
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    pub org: Option<String>,
    pub roles: Vec<Role>,
}

impl Principal {
    /// The bootstrap admin token's caller: `platform-admin` (dev and tests rely on it).
    pub fn bootstrap() -> Self {
        Self {
            subject: "bootstrap-admin".to_owned(),
            scopes: vec![SCOPE_ADMIN.to_owned()],
            org: None,
            roles: vec![Role::PlatformAdmin],
        }
    }

    /// What RBAC checks this caller against.
    pub fn grant(&self) -> Grant {
        Grant {
            org: self.org.clone(),
            roles: self.roles.clone(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == SCOPE_ADMIN)
    }
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) if state.admin.matches(token) => Ok(Principal::bootstrap()),
            Some(_) => Err(Problem::new(
                ProblemKind::Unauthorized,
                "invalid bearer token",
            )),
            None => Err(Problem::new(
                ProblemKind::Unauthorized,
                "missing `Authorization: Bearer <admin token>`",
            )),
        }
    }
}
