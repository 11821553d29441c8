//! The observing middleware (request size, `x-stub-*` echo headers, metrics
//! labels) and URL query-string decoding.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, SharedCtx, BODY_LIMIT, H_PROVIDER, H_REQUEST_BYTES, H_SAW_AUTH, H_SAW_PATH};

const GEMINI_METHODS: [&str; 5] = [
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

/// Marker extension set on responses produced by a router's fallback.
#[derive(Clone, Copy, Debug)]
pub struct Unmatched;

/// Metrics label for a request path: the route pattern, with model ids
/// replaced by a placeholder so label cardinality stays bounded.
fn endpoint_label(path: &str) -> Cow<'_, str> {
    if let Some(idx) = path.find("/models/") {
        let prefix = &path[..idx];
        let rest = &path[idx + "/models/".len()..];
        if let Some((_, method)) = rest.rsplit_once(':') {
            // The prefix is the API version (`/v1beta`, `/v1`): a matched route, so bounded.
            let method = GEMINI_METHODS
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("unknown");
            return Cow::Owned(format!("{prefix}/models/{{model}}:{method}"));
        }
        return Cow::Owned(format!("{prefix}/models/{{model}}"));
    }
    Cow::Borrowed(path)
}

/// Middleware: buffers the body (to report its size), echoes what the stub
/// saw in `x-stub-*` headers and counts the request.
pub async fn observe(State(ctx): State<SharedCtx>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let saw_auth: Option<HeaderValue> = parts
        .headers
        .get(header::AUTHORIZATION)
        .or_else(|| parts.headers.get("x-goog-api-key"))
        .cloned()
        .or_else(|| {
            query_param(parts.uri.query(), "key").and_then(|k| HeaderValue::from_str(&k).ok())
        });
    let saw_path = parts
        .uri
        .path_and_query()
        .and_then(|pq| HeaderValue::from_str(pq.as_str()).ok());
    let mut resp = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => {
            let len = bytes.len();
            let mut resp = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            resp.headers_mut()
                .insert(H_REQUEST_BYTES, HeaderValue::from(len));
            resp
        }
        Err(_) => ApiError::bad_request(format!(
            "Request payload size exceeds the limit: {BODY_LIMIT} bytes."
        ))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .render(ctx.dialect),
    };
    let h = resp.headers_mut();
    if let Some(v) = saw_auth {
        h.insert(H_SAW_AUTH, v);
    }
    if let Some(v) = saw_path {
        h.insert(H_SAW_PATH, v);
    }
    h.insert(H_PROVIDER, HeaderValue::from_static(ctx.provider));
    let label = if resp.extensions().get::<Unmatched>().is_some() {
        Cow::Borrowed("unmatched")
    } else {
        endpoint_label(&path)
    };
    ctx.metrics.record(&label, resp.status().as_u16());
    resp
}

/// Value of `name` in a URL query string (percent-decoding `%XX` and `+`).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_keep_the_api_version_and_hide_the_model() {
        for (path, label) in [
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                "/v1beta/models/{model}:generateContent",
            ),
            (
                "/v1/models/gemini-2.5-flash:streamGenerateContent",
                "/v1/models/{model}:streamGenerateContent",
            ),
            ("/v1/models/x:frobnicate", "/v1/models/{model}:unknown"),
            ("/v1/models/gemini-2.5-flash", "/v1/models/{model}"),
            ("/v1/chat/completions", "/v1/chat/completions"),
        ] {
            assert_eq!(endpoint_label(path), label, "{path}");
        }
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("alt=sse&key=a%2Bb+c"), "key").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param(Some("alt=sse"), "key"), None);
        assert_eq!(query_param(None, "key"), None);
        assert_eq!(
            query_param(Some("key=abc%"), "key").as_deref(),
            Some("abc%")
        );
    }
}
