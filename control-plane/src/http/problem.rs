//! RFC 9457 `application/problem+json` responses with a stable `type` URI per kind of error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

const TYPE_BASE: &str = "https://leaky-tokens.dev/problems/";

/// Every kind of error the admin API answers with. The `type` URI of each is part of the public API:
/// clients branch on it, so a kind is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    Validation,
    MalformedJson,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    /// Authenticated, but the caller's roles or org do not allow the operation (RBAC).
    Forbidden,
    NotFound,
    Conflict,
    PreconditionFailed,
    PreconditionRequired,
    Unavailable,
    Internal,
    /// A webhook whose signature is missing, wrong or stale.
    InvalidSignature,
}

impl ProblemKind {
    fn slug_title_status(self) -> (&'static str, &'static str, StatusCode) {
        match self {
            Self::Validation => (
                "validation",
                "Invalid request",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            Self::MalformedJson => (
                "malformed-json",
                "Malformed JSON body",
                StatusCode::BAD_REQUEST,
            ),
            Self::PayloadTooLarge => (
                "payload-too-large",
                "Request body too large",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            Self::UnsupportedMediaType => (
                "unsupported-media-type",
                "Body must be application/json",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            Self::Unauthorized => (
                "unauthorized",
                "Missing or invalid credentials",
                StatusCode::UNAUTHORIZED,
            ),
            Self::Forbidden => ("forbidden", "Not allowed", StatusCode::FORBIDDEN),
            Self::NotFound => ("not-found", "Not found", StatusCode::NOT_FOUND),
            Self::Conflict => ("conflict", "Conflict", StatusCode::CONFLICT),
            Self::PreconditionFailed => (
                "precondition-failed",
                "Stale ETag",
                StatusCode::PRECONDITION_FAILED,
            ),
            Self::PreconditionRequired => (
                "precondition-required",
                "If-Match required",
                StatusCode::PRECONDITION_REQUIRED,
            ),
            Self::Unavailable => (
                "unavailable",
                "Service unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            Self::Internal => (
                "internal",
                "Internal error",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            Self::InvalidSignature => (
                "invalid-signature",
                "Invalid webhook signature",
                StatusCode::BAD_REQUEST,
            ),
        }
    }

    /// The stable `type` URI, e.g. `https://leaky-tokens.dev/problems/not-found`.
    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.slug_title_status().0)
    }

    pub fn status(self) -> StatusCode {
        self.slug_title_status().2
    }
}

/// One invalid input, named by its JSON field (or query parameter, or path segment).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error response. Build it with [`Problem::new`] or [`Problem::invalid`].
#[derive(Debug)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A 422 validation problem naming each bad field.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let detail = format!("invalid field(s): {}", fields.join(", "));
        Self {
            kind: ProblemKind::Validation,
            detail,
            errors,
        }
    }

    /// A 422 problem for one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, message)])
    }
}

/// The `application/problem+json` body of every error (RFC 9457), as sent and as the OpenAPI spec
/// documents it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://leaky-tokens.dev/problems/not-found",
    "title": "Not found",
    "status": 404,
    "detail": "org `0f8fad5b-d9cb-469f-a165-70867728950e` not found"
}))]
pub struct ProblemDetails {
    /// Stable URI of the kind of error; clients branch on it.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Each invalid field (validation problems only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// The body this problem is sent with.
    pub fn details(self) -> ProblemDetails {
        let (_, title, status) = self.kind.slug_title_status();
        ProblemDetails {
            type_uri: self.kind.type_uri(),
            title,
            status: status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let json = serde_json::to_vec(&self.details()).unwrap_or_default();
        let mut response = (status, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<sqlx::Error> for Problem {
    /// Database errors no domain claimed: a pool timeout or I/O error means Postgres is unreachable
    /// (503); anything else is a bug or a broken schema (500, logged, details not leaked).
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Problem::new(
                    ProblemKind::Unavailable,
                    "the database is unreachable; retry later",
                )
            }
            // Class 08 (connection exception), 57P01..57P03 (shutdown, cannot connect now).
            sqlx::Error::Database(ref d)
                if d.code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                tracing::warn!(error = %e, "database unavailable");
                Problem::new(
                    ProblemKind::Unavailable,
                    "the database is unreachable; retry later",
                )
            }
            other => {
                tracing::error!(error = %other, "database error");
                Problem::new(ProblemKind::Internal, "internal error")
            }
        }
    }
}
