//! Reading what the request says: framing checks, the body (up to the configured maximum), the model
//! (from the JSON body or the path) and whether it is a well-formed model name, and the upstream
//! request's path and head.

use crate::balancer::Deployment;
use crate::headers::{self, ConnectionNamed, HeaderPolicy};
use crate::snapshot::Upstream;
use crate::wire::UpstreamHead;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use leaky_config::{Cidr, Dialect};
use leaky_filters::{RejectKind, Rejection, RequestCtx};
use pingora::proxy::Session;
use std::borrow::Cow;

/// The declared body length, checked against the maximum. Also refuses both framings on one request
/// (pingora issue #945) as a second line: the listener (`listener.rs`) already refuses such a head
/// with 400 before Pingora parses it (Pingora drops `Content-Length` when `Transfer-Encoding` is
/// present, so by the time a request gets here the pair is normally gone).
pub fn check_framing(headers: &HeaderMap, max_body: u64) -> Result<Option<u64>, Rejection> {
    let te = headers.contains_key(header::TRANSFER_ENCODING);
    let cl = headers.get(header::CONTENT_LENGTH);
    if te && cl.is_some() {
        return Err(Rejection::new(
            RejectKind::InvalidRequest,
            "A request may carry Content-Length or Transfer-Encoding, not both.",
        ));
    }
    let Some(cl) = cl else { return Ok(None) };
    let len = cl
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Rejection::new(
                RejectKind::InvalidRequest,
                "Content-Length is not a number.",
            )
        })?;
    if len > max_body {
        return Err(too_large(max_body));
    }
    Ok(Some(len))
}

pub fn too_large(max_body: u64) -> Rejection {
    Rejection::new(
        RejectKind::PayloadTooLarge,
        format!("The request body is larger than the gateway's limit of {max_body} bytes."),
    )
}

/// The body's `model`. `Ok(None)` for an empty body; an error for a body that is not a JSON object.
/// (Only `model` is read, everything else skipped without allocating: `leaky_usage::peek_model`.)
pub fn model_from_body(body: &[u8]) -> Result<Option<String>, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match leaky_usage::peek_model(body) {
        Ok(m) => Ok(m.map(Cow::into_owned)),
        Err(e) => Err(Rejection::new(
            RejectKind::InvalidRequest,
            format!("We could not parse the JSON body of your request: {e}."),
        )),
    }
}

/// The model of `models/{model}[:method]` anywhere in `rest` (Gemini native paths, `/v1/models/{id}`).
pub fn model_from_path(rest: &str) -> Option<String> {
    let after = rest.split("/models/").nth(1)?;
    let seg = after.split('/').next()?;
    let model = seg.split(':').next()?;
    (!model.is_empty()).then(|| model.to_string())
}

/// Longest model name accepted (real ids are far shorter; fine-tuned ones reach ~100 characters).
pub const MAX_MODEL_LEN: usize = 256;

/// A model name is refused at the edge unless it is 1..=256 characters of what real model ids use:
/// ASCII letters, digits and `-._:/@+` (`gpt-4o-2024-08-06`, `ft:gpt-4o-mini:org::id`,
/// `models/gemini-2.5-flash`, `claude-3-5-sonnet@20240620`). It goes into logs, usage records,
/// metrics and headers; nothing else (control characters, spaces, quotes, `%`) has a place there.
pub fn check_model(model: &str) -> Result<(), Rejection> {
    let ok = !model.is_empty()
        && model.len() <= MAX_MODEL_LEN
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+".contains(&b));
    if ok {
        return Ok(());
    }
    Err(Rejection::new(
        RejectKind::InvalidRequest,
        format!(
            "Invalid model name: use 1 to {MAX_MODEL_LEN} characters of letters, digits and `-._:/@+`."
        ),
    )
    .with_param("model"))
}

/// `path_prefix` + the part of `path` after the route prefix + the query without the caller's `key`.
pub fn upstream_path(path_prefix: &str, rest: &str, query: Option<&str>) -> String {
    let mut out =
        String::with_capacity(path_prefix.len() + rest.len() + query.map_or(0, str::len) + 1);
    out.push_str(path_prefix);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        let mut first = true;
        for kv in q
            .split('&')
            .filter(|kv| !kv.is_empty() && *kv != "key" && !kv.starts_with("key="))
        {
            out.push(if first { '?' } else { '&' });
            out.push_str(kv);
            first = false;
        }
    }
    out
}

/// Accumulates a request body, refusing it as soon as it passes `max`.
pub struct BodyBuf {
    buf: Vec<u8>,
    max: u64,
}

impl BodyBuf {
    pub fn new(expected: Option<u64>, max: u64) -> Self {
        // Pre-size from Content-Length (already checked against `max`), but never trust it for more.
        let cap = expected.unwrap_or(0).min(max) as usize;
        BodyBuf {
            buf: Vec::with_capacity(cap),
            max,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        if (self.buf.len() + chunk.len()) as u64 > self.max {
            return Err(too_large(self.max));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    pub fn finish(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// A terminating error event for an event stream cut by the gateway, in the stream's own format:
/// `data: {"error": ...}` for OpenAI and Gemini streams, DashScope's `event:error` with its status line
/// for Qwen's native API.
pub fn stream_error_event(dialect: Dialect, request_id: &str, message: &str) -> Bytes {
    let r = Rejection::new(RejectKind::GatewayTimeout, message);
    let json = r.render(dialect, request_id);
    let mut out = Vec::with_capacity(json.len() + 48);
    match dialect {
        Dialect::Dashscope => {
            out.extend_from_slice(b"event:error\n:HTTP_STATUS/504\ndata:");
        }
        Dialect::Openai | Dialect::Google => out.extend_from_slice(b"data: "),
    }
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What the upstream request head is built from on the caller's side.
pub struct Caller<'a> {
    pub session: &'a Session,
    /// The request id and the headers the chain asked for.
    pub req: &'a RequestCtx,
    /// `server.trusted_proxies` of the request's config version.
    pub trusted: &'a [Cidr],
    pub query: Option<&'a str>,
    /// The request is traced: each attempt appends its own `traceparent`
    /// (`trace::Parent::attempt`), so the caller's is not forwarded.
    pub traced: bool,
}

/// Names of headers the gateway sets on the upstream request (a `static`: the set borrows them).
static SET_NAMES: [HeaderName; 5] = [
    header::HOST,
    headers::X_FORWARDED_FOR,
    header::FORWARDED,
    header::CONTENT_LENGTH,
    headers::X_REQUEST_ID,
];

/// The upstream request's head for deployment `d` of `up`: the caller's method, the upstream path,
/// the headers the route's policy forwards (never hop-by-hop ones), the deployment's host,
/// credential and account, `X-Forwarded-For` / `Forwarded`, the framing of the (whole) body, the
/// request id, and what the chain asked for.
///
/// Written straight into its bytes (`wire.rs`). What the gateway sets replaces what the caller sent
/// of the same name, and of two the gateway sets the later wins (the chain's over the credential),
/// as `HeaderMap::insert` did when this was a map.
pub fn upstream_head(
    caller: &Caller<'_>,
    up: &Upstream,
    d: &Deployment,
    rest: &str,
    body_len: usize,
) -> Result<UpstreamHead, Rejection> {
    let Caller {
        session,
        req: rcx,
        trusted,
        query,
        traced,
    } = *caller;
    let head = session.req_header();
    let internal = |e: &dyn std::fmt::Display| {
        Rejection::new(
            RejectKind::Internal,
            format!("building the upstream request: {e}"),
        )
    };
    let (xff, fwd) = match session.client_addr().and_then(|a| a.as_inet()) {
        Some(peer) => headers::forwarded_for(&head.headers, peer.ip(), trusted),
        None => (None, None),
    };
    let length = (body_len > 0
        || matches!(head.method, Method::POST | Method::PUT | Method::PATCH))
    .then(|| HeaderValue::from(body_len));
    let id = HeaderValue::from_str(&rcx.request_id).map_err(|e| internal(&e))?;
    let [host, xff_name, fwd_name, cl, rid] = &SET_NAMES;
    let mut set: Vec<(&HeaderName, &HeaderValue)> =
        Vec::with_capacity(8 + d.account.len() + rcx.upstream_headers.len());
    let mut put = |name, value| match set.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => set.push((name, value)),
    };
    put(host, &d.host);
    for (name, value) in d.auth.iter().chain(d.account.iter()) {
        put(name, value);
    }
    let optional = [(xff_name, &xff), (fwd_name, &fwd), (cl, &length)];
    for (name, value) in optional {
        if let Some(v) = value {
            put(name, v);
        }
    }
    put(rid, &id);
    for (name, value) in &rcx.upstream_headers {
        put(name, value);
    }
    let path = upstream_path(&up.path_prefix, rest, query);
    let mut out =
        UpstreamHead::new(head.method.clone(), path.as_bytes(), 512).map_err(|e| internal(&e))?;
    write_headers(&mut out, &head.headers, &up.headers, &set, traced);
    Ok(out)
}

/// The caller's headers the route's policy forwards (never hop-by-hop ones, nor one that `set`
/// replaces, nor the caller's `traceparent` when the request is `traced`: each attempt adds its
/// own), then `set`: what the gateway sets.
fn write_headers(
    out: &mut UpstreamHead,
    client: &HeaderMap,
    policy: &HeaderPolicy,
    set: &[(&HeaderName, &HeaderValue)],
    traced: bool,
) {
    let hop = ConnectionNamed::of(client);
    // The gateway writes its own line of this name.
    let replaced = |name: &HeaderName| {
        set.iter().any(|(n, _)| *n == name) || (traced && *name == crate::trace::TRACEPARENT)
    };
    for (name, value) in client.iter() {
        if policy.forwards(name) && !hop.contains(name) && !replaced(name) {
            out.append(name, value);
        }
    }
    for (name, value) in set {
        out.append(name, value);
    }
}

/// The client's IP address (the TCP peer), when the connection is over IP.
pub fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session.client_addr()?.as_inet().map(|a| a.ip())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_traced_requests_head_leaves_the_callers_traceparent_to_the_attempt() {
        let policy = HeaderPolicy::new(Dialect::Openai, &[], &[]);
        let mut client = HeaderMap::new();
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        client.insert(crate::trace::TRACEPARENT, caller.parse().unwrap());
        client.insert("tracestate", "k=v".parse().unwrap());
        client.insert(header::ACCEPT, "*/*".parse().unwrap());
        let host = HeaderValue::from_static("api.example.com");
        let set = [(&header::HOST, &host)];
        let head = |traced| {
            let mut out = UpstreamHead::new(Method::POST, b"/v1/chat", 0).unwrap();
            write_headers(&mut out, &client, &policy, &set, traced);
            out
        };
        let untraced = head(false);
        assert_eq!(untraced.get("traceparent"), Some(caller.as_bytes()));
        let traced = head(true);
        assert_eq!(traced.get("traceparent"), None);
        // The rest of the trace context and every other header go on either way.
        assert_eq!(traced.get("tracestate"), Some(&b"k=v"[..]));
        assert_eq!(traced.get("accept"), Some(&b"*/*"[..]));
        assert_eq!(traced.get("host"), Some(&b"api.example.com"[..]));
        assert_eq!(traced.headers().count(), untraced.headers().count() - 1);
    }

    #[test]
    fn refuses_double_framing_and_oversized_length() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        assert_eq!(check_framing(&h, 100).unwrap(), Some(10));
        assert_eq!(
            check_framing(&h, 5).unwrap_err().kind,
            RejectKind::PayloadTooLarge
        );
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(
            check_framing(&h, 100).unwrap_err().kind,
            RejectKind::InvalidRequest
        );
    }

    #[test]
    fn reads_model_from_body() {
        assert_eq!(
            model_from_body(br#"{"model":"gpt-4o","messages":[]}"#)
                .unwrap()
                .as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            model_from_body(br#"{"model":"g\u0070t"}"#)
                .unwrap()
                .as_deref(),
            Some("gpt")
        );
        assert_eq!(model_from_body(b"{}").unwrap(), None);
        assert_eq!(model_from_body(b"  ").unwrap(), None);
        let e = model_from_body(b"{\"model\":").unwrap_err();
        assert_eq!(e.kind, RejectKind::InvalidRequest);
        assert!(
            e.message.starts_with("We could not parse the JSON body"),
            "{}",
            e.message
        );
        assert!(model_from_body(b"[1]").is_err());
    }

    #[test]
    fn reads_model_from_path() {
        assert_eq!(
            model_from_path("/models/gemini-2.5-flash:generateContent").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(model_from_path("/models/gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(model_from_path("/models"), None);
        assert_eq!(model_from_path("/chat/completions"), None);
    }

    #[test]
    fn model_names_are_bounded_and_printable() {
        for ok in [
            "gpt-4o",
            "ft:gpt-4o-mini:acme::abc123",
            "models/gemini-2.5-flash",
            "claude-3-5-sonnet@20240620",
            "qwen2.5-72b-instruct",
        ] {
            assert!(check_model(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_MODEL_LEN + 1);
        for bad in [
            "",
            "gpt-4o\r\nforged",
            "gpt 4o",
            "gpt\u{1b}[31m",
            "gpt%0a",
            "gpt-é",
            &long,
        ] {
            let e = check_model(bad).unwrap_err();
            assert_eq!(e.kind, RejectKind::InvalidRequest, "{bad:?}");
            assert_eq!(e.param, Some("model"));
        }
        assert!(check_model(&"a".repeat(MAX_MODEL_LEN)).is_ok());
    }

    #[test]
    fn rewrites_path_and_strips_caller_key() {
        assert_eq!(
            upstream_path("/v1", "/chat/completions", None),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path(
                "/v1beta",
                "/models/m:streamGenerateContent",
                Some("key=secret&alt=sse")
            ),
            "/v1beta/models/m:streamGenerateContent?alt=sse"
        );
        assert_eq!(upstream_path("", "", Some("key=x")), "/");
        assert_eq!(
            upstream_path("/a", "/b", Some("x=1&key&keyring=2")),
            "/a/b?x=1&keyring=2"
        );
    }

    #[test]
    fn body_buffer_enforces_maximum() {
        let mut b = BodyBuf::new(Some(4), 8);
        b.push(b"1234").unwrap();
        b.push(b"5678").unwrap();
        assert_eq!(b.push(b"9").unwrap_err().kind, RejectKind::PayloadTooLarge);
    }
}
