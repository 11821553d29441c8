//! Strict request parsing: JSON bodies (size-limited, unknown fields refused, errors naming the field),
//! query strings, path ids, `If-Match`, and cursor pagination. Every rejection is a [`Problem`].

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::{Problem, ProblemKind};

/// A JSON body decoded into `T` (whose serde type should `deny_unknown_fields`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = read_body(req, state).await?;
        decode(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: `None` when the body is empty, else decoded like [`ApiJson`].
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MaybeJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(MaybeJson(None));
        }
        decode(&bytes).map(|v| MaybeJson(Some(v)))
    }
}

/// The body's bytes: a JSON content type (when one is sent) and at most the body limit.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Problem> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(ct) = content_type {
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            let detail = format!("content-type `{ct}` is not application/json");
            return Err(Problem::new(ProblemKind::UnsupportedMediaType, detail));
        }
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let detail = format!("the body exceeds {} bytes", super::MAX_BODY_BYTES);
            Problem::new(ProblemKind::PayloadTooLarge, detail)
        } else {
            Problem::new(ProblemKind::MalformedJson, e.body_text())
        }
    })
}

/// Decodes a JSON document, naming the offending field on a data error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Problem::new(ProblemKind::MalformedJson, inner.to_string());
        }
        Problem::field(field_of(&path, &inner.to_string()), inner.to_string())
    })?;
    de.end()
        .map_err(|e| Problem::new(ProblemKind::MalformedJson, e.to_string()))?;
    Ok(value)
}

/// The field an error is about: serde names unknown and missing fields only in its message.
fn field_of(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        // serde_path_to_error already ends an unknown field's path with its name.
        (_, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
        (_, Some(name)) => format!("{path}.{name}"),
        (".", None) => "body".to_owned(),
        (_, None) => path.to_owned(),
    }
}

/// A query string decoded into `T`; a bad parameter is a 422 naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| {
                let text = e.body_text();
                // "Failed to deserialize query string: limit: invalid digit found in string"
                let rest = text
                    .split_once("query string: ")
                    .map_or(text.as_str(), |(_, r)| r);
                let field = rest.split_once(':').map_or("query", |(f, _)| f);
                let field = if field.contains(' ') { "query" } else { field };
                Problem::field(field, rest.to_owned())
            })
    }
}

/// Parses a path or query id; names `field` when it is not a UUID.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::field(field, format!("`{raw}` is not a UUID")))
}

/// The strong ETag of an object at `version`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The version `If-Match` asks for. Required on every update (428 without it), so no client overwrites
/// a change it has not seen; a value that is no version of ours can never match (412).
pub fn if_match(headers: &HeaderMap) -> Result<i64, Problem> {
    let raw = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            let detail = "send `If-Match` with the ETag you read (optimistic concurrency)";
            Problem::new(ProblemKind::PreconditionRequired, detail)
        })?;
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map_err(|_| {
            Problem::new(
                ProblemKind::PreconditionFailed,
                format!("If-Match `{raw}` matches no version"),
            )
        })
}

/// `?limit=&after=`: at most `limit` items (1..=100, default 50) with ids after the cursor `after`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1..=100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(format = Uuid)]
    pub after: Option<String>,
}

/// Largest page a list returns.
pub const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 50;

impl PageQuery {
    /// The validated limit and cursor.
    pub fn resolve(
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<(i64, Option<Uuid>), Problem> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Problem::field("limit", format!("must be 1..={MAX_PAGE}")));
        }
        let after = after.map(|a| parse_id("after", a)).transpose()?;
        Ok((i64::from(limit), after))
    }
}

/// One page of a list: `items`, and `next`, the `after` cursor of the next page (absent on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `after` cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// `rows` were fetched with `limit + 1`: the extra row only tells that there is a next page.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more { rows.last().map(cursor) } else { None };
        Self { items: rows, next }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    fn field(json: &str) -> Vec<String> {
        let problem = decode::<Body>(json.as_bytes()).unwrap_err();
        problem.errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn data_errors_name_the_field() {
        assert_eq!(field(r#"{"name": "a", "extra": 1}"#), ["extra"]);
        assert_eq!(field(r#"{}"#), ["name"]);
        assert_eq!(field(r#"{"name": 3}"#), ["name"]);
        assert_eq!(field(r#"{"name": "a", "inner": {"n": -1}}"#), ["inner.n"]);
        assert_eq!(field(r#"{"name": "a", "inner": {"m": 1}}"#), ["inner.m"]);
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for bad in ["{", "", r#"{"name": "a"} {}"#, "nul"] {
            let problem = decode::<Body>(bad.as_bytes()).unwrap_err();
            assert_eq!(problem.kind, ProblemKind::MalformedJson, "{bad}");
        }
    }

    #[test]
    fn pages_report_a_next_cursor_only_when_more_rows_exist() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((page.items, page.next), (vec![1, 2], Some("2".to_owned())));
        let page = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((page.items, page.next), (vec![1, 2], None));
    }

    #[test]
    fn if_match_reads_strong_and_weak_etags() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            if_match(&headers).unwrap_err().kind,
            ProblemKind::PreconditionRequired
        );
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"7\""));
        assert_eq!(if_match(&headers).unwrap(), 7);
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert_eq!(
            if_match(&headers).unwrap_err().kind,
            ProblemKind::PreconditionFailed
        );
    }
}
