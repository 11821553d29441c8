//! Streaming response bodies and SSE `data:` framing.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;

use super::delay;

/// A streaming response whose chunks are emitted after their delays.
pub fn stream_response(content_type: &'static str, events: Vec<(Duration, Bytes)>) -> Response {
    let stream = futures::stream::iter(events).then(|(d, b)| async move {
        delay(d).await;
        Ok::<Bytes, Infallible>(b)
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `data: <json>\n\n`
pub fn sse_data(v: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut out, v);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
