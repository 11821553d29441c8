//! JSON bodies in and out, API-key checks and typed field access with
//! OpenAI-style errors.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::errors::type_phrase;
use super::{ApiError, H_COMPLETION_TOKENS};

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response from any serializable value.
pub fn serialize_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = Vec::with_capacity(1024);
    let _ = serde_json::to_writer(&mut bytes, body);
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ApiError::bad_request(format!(
            "Invalid request body: expected a JSON object, but got {} instead.",
            type_phrase(&other)
        ))),
        Err(e) => Err(ApiError::malformed_json(e.to_string())),
    }
}

/// `Authorization: Bearer <key>` (non-empty) value.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = key.trim();
    (!key.is_empty()).then_some(key)
}

/// Accepts any key except ones starting with `invalid` (to test the
/// provider's bad-key response).
pub fn check_key(key: Option<&str>) -> Result<(), ApiError> {
    match key {
        None => Err(ApiError::missing_key()),
        Some(k) if k.trim().is_empty() => Err(ApiError::missing_key()),
        Some(k) if k.starts_with("invalid") => Err(ApiError::invalid_key(k)),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Typed field access with OpenAI-style errors.
// ---------------------------------------------------------------------------

pub fn opt_u64(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None if v.is_i64() => Err(ApiError::invalid_value(
                key,
                format!("Invalid '{key}': integer below minimum value."),
            )),
            None => Err(ApiError::invalid_type(key, "an integer", v)),
        },
    }
}

pub fn opt_i64(o: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid_type(key, "an integer", v)),
    }
}

pub fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid_type(key, "a boolean", v)),
    }
}

pub fn opt_number(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid_type(key, "a number", v)),
    }
}

pub fn req_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Err(ApiError::missing(key)),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(ApiError::invalid_type(key, "a string", v)),
    }
}

/// `stop`-style value: a string or an array of strings (at most 4... or 5 for Gemini).
pub fn stop_list(v: Option<&Value>, key: &str, max: usize) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => {
            if a.len() > max {
                return Err(ApiError::invalid_value(
                    key,
                    format!("Invalid '{key}': array too long. Expected an array with maximum length {max}, but got an array with length {} instead.", a.len()),
                ));
            }
            a.iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::invalid_type(
                        &format!("{key}[{i}]"),
                        "a string",
                        other,
                    )),
                })
                .collect()
        }
        Some(other) => Err(ApiError::invalid_type(
            key,
            "a string or array of strings",
            other,
        )),
    }
}

/// The `x-stub-completion-tokens` override, if present.
pub fn forced_tokens(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    match headers.get(H_COMPLETION_TOKENS) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n <= 1_000_000)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid {H_COMPLETION_TOKENS} header: expected an integer between 0 and 1000000."
                ))
            }),
    }
}
