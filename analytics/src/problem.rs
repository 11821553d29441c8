//! RFC 9457 problems and the bearer-token check, shared by the role's routes ([`crate::api`] and
//! [`crate::reports::api`]); a leaf, so the route modules do not import each other. The
//! [`Authorized`] and [`AuthQuery`] extractors are every handler's preamble: the token checked
//! (401), then the query string parsed (400), each answered as problem+json.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An RFC 9457 problem with the control plane's `type` URIs.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("https://leaky-tokens.dev/problems/{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Whether the request carries `token` as its bearer token (compared in constant time); `None`:
/// the routes are open.
pub fn bearer_ok(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// 401 without the token.
pub fn unauthorized() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Missing or invalid credentials",
        "a valid bearer token is required",
    )
}

/// A route state that holds the role's bearer token.
pub trait TokenState: Send + Sync {
    /// The token the routes require (`None`: open).
    fn token(&self) -> Option<&str>;
}

/// A request whose bearer token was checked against the state's (rejected with 401 otherwise).
pub struct Authorized;

impl<T: TokenState + 'static> FromRequestParts<Arc<T>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<T>) -> Result<Self, Response> {
        if bearer_ok(state.token(), &parts.headers) {
            Ok(Authorized)
        } else {
            Err(unauthorized())
        }
    }
}

/// An [`Authorized`] request's query string as `Q` (a 400 problem naming what is wrong otherwise).
pub struct AuthQuery<Q>(pub Q);

impl<T, Q> FromRequestParts<Arc<T>> for AuthQuery<Q>
where
    T: TokenState + 'static,
    Q: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<T>) -> Result<Self, Response> {
        Authorized::from_request_parts(parts, state).await?;
        match Query::<Q>::try_from_uri(&parts.uri) {
            Ok(Query(q)) => Ok(AuthQuery(q)),
            Err(e) => Err(crate::query::BadQuery(e.body_text()).into_response()),
        }
    }
}
