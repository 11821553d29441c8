//! Shared plumbing: per-router context, metrics, the observing middleware,
//! provider error dialects, latency pacing, streaming bodies and the
//! completion planner used by every provider.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::control::{FaultCounters, FaultPlan, Limiter};
use crate::gen::{self, Hasher, Rng};
use crate::tokens::Tokenizer;
use crate::{Latency, StubOptions};

/// Largest request body the stubs accept.
pub const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub const H_REQUEST_BYTES: HeaderName = HeaderName::from_static("x-stub-request-bytes");
pub const H_SAW_AUTH: HeaderName = HeaderName::from_static("x-stub-saw-authorization");
pub const H_SAW_PATH: HeaderName = HeaderName::from_static("x-stub-saw-path");
pub const H_PROVIDER: HeaderName = HeaderName::from_static("x-stub-provider");
pub const H_COMPLETION_TOKENS: &str = "x-stub-completion-tokens";

/// State shared by every handler of one provider router.
pub struct Ctx {
    pub provider: &'static str,
    pub latency: Latency,
    pub dialect: Dialect,
    pub metrics: Metrics,
    pub faults: FaultPlan,
    pub fault_counters: FaultCounters,
    pub limiter: Limiter,
}

impl Ctx {
    pub fn new(provider: &'static str, dialect: Dialect, opts: &StubOptions) -> Arc<Self> {
        Arc::new(Ctx {
            provider,
            latency: opts.latency,
            dialect,
            metrics: Metrics::default(),
            faults: opts.faults.clone(),
            fault_counters: FaultCounters::default(),
            limiter: Limiter::new(opts.limits, opts.clock.clone()),
        })
    }
}

pub type SharedCtx = Arc<Ctx>;

/// Hand-rolled Prometheus counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<String, HashMap<u16, u64>>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Metrics {
    pub fn record(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(by_status) = map.get_mut(endpoint) {
            *by_status.entry(status).or_insert(0) += 1;
        } else {
            map.insert(endpoint.to_string(), HashMap::from([(status, 1)]));
        }
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        crate::control::record_tokens(prompt + completion);
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    pub fn render(&self, provider: &str) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# HELP stub_requests_total Requests served by the stub, by endpoint and HTTP status.\n");
        out.push_str("# TYPE stub_requests_total counter\n");
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(&String, u16, u64)> = map
            .iter()
            .flat_map(|(e, s)| s.iter().map(move |(st, n)| (e, *st, *n)))
            .collect();
        rows.sort();
        for (endpoint, status, n) in rows {
            let _ = writeln!(
                out,
                "stub_requests_total{{provider=\"{provider}\",endpoint=\"{}\",status=\"{status}\"}} {n}",
                endpoint.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        drop(map);
        out.push_str(
            "# HELP stub_prompt_tokens_total Prompt tokens reported in successful responses.\n",
        );
        out.push_str("# TYPE stub_prompt_tokens_total counter\n");
        let _ = writeln!(
            out,
            "stub_prompt_tokens_total{{provider=\"{provider}\"}} {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        );
        out.push_str("# HELP stub_completion_tokens_total Completion tokens reported in successful responses.\n");
        out.push_str("# TYPE stub_completion_tokens_total counter\n");
        let _ = writeln!(
            out,
            "stub_completion_tokens_total{{provider=\"{provider}\"}} {}",
            self.completion_tokens.load(Ordering::Relaxed)
        );
        out
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn metrics(State(ctx): State<SharedCtx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(ctx.provider),
    )
        .into_response()
}

const GEMINI_METHODS: [(&str, &str); 5] = [
    ("generateContent", "/v1beta/models/{model}:generateContent"),
    (
        "streamGenerateContent",
        "/v1beta/models/{model}:streamGenerateContent",
    ),
    ("countTokens", "/v1beta/models/{model}:countTokens"),
    ("embedContent", "/v1beta/models/{model}:embedContent"),
    (
        "batchEmbedContents",
        "/v1beta/models/{model}:batchEmbedContents",
    ),
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
            for (name, label) in GEMINI_METHODS {
                if name == method {
                    return Cow::Borrowed(label);
                }
            }
            return Cow::Borrowed("/v1beta/models/{model}:unknown");
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

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Which provider's error body to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error":{"message","type","param","code"}}`
    OpenAi,
    /// Gemini's OpenAI-compatible endpoints: Google errors wrapped in a JSON array.
    GoogleCompat,
    /// `{"error":{"code","message","status"}}`
    Google,
    /// `{"request_id","code","message"}`
    DashScope,
    /// DashScope compatible mode: OpenAI shape plus a top-level `request_id`.
    DashScopeCompat,
}

/// Why a request was refused with a 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// The key's requests-per-minute limit.
    Requests,
    /// The key's tokens-per-minute limit.
    Tokens,
    /// An injected 429 fault.
    Injected,
}

#[derive(Debug, Clone)]
pub enum ErrKind {
    Throttled {
        kind: Throttle,
        limit: u64,
        used: u64,
        retry_after: u64,
    },
    ServerError,
    Overloaded,
    BadRequest,
    MalformedJson,
    MissingKey,
    InvalidKey(String),
    ModelNotFound(String),
    RouteNotFound {
        method: String,
        path: String,
    },
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub status: Option<StatusCode>,
}

impl ApiError {
    fn new(kind: ErrKind, message: String) -> Self {
        ApiError {
            kind,
            message,
            param: None,
            code: None,
            status: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrKind::BadRequest, message.into())
    }
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(ErrKind::MalformedJson, detail.into())
    }
    pub fn missing_key() -> Self {
        Self::new(ErrKind::MissingKey, String::new())
    }
    pub fn invalid_key(key: &str) -> Self {
        Self::new(ErrKind::InvalidKey(key.to_string()), String::new())
    }
    pub fn model_not_found(model: &str) -> Self {
        Self::new(ErrKind::ModelNotFound(model.to_string()), String::new())
    }
    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self::new(
            ErrKind::RouteNotFound {
                method: method.to_string(),
                path: path.to_string(),
            },
            String::new(),
        )
    }
    /// OpenAI "Missing required parameter" error.
    pub fn missing(param: &str) -> Self {
        let mut e = Self::bad_request(format!("Missing required parameter: '{param}'."));
        e.param = Some(param.to_string());
        e.code = Some("missing_required_parameter");
        e
    }
    /// OpenAI "Invalid type" error.
    pub fn invalid_type(param: &str, expected: &str, got: &Value) -> Self {
        let mut e = Self::bad_request(format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_phrase(got)
        ));
        e.param = Some(param.to_string());
        e.code = Some("invalid_type");
        e
    }
    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::bad_request(message);
        e.param = Some(param.to_string());
        e.code = Some("invalid_value");
        e
    }
    /// A provider 429 (rate limit or injected).
    pub fn throttled(kind: Throttle, limit: u64, used: u64, retry_after: u64) -> Self {
        Self::new(
            ErrKind::Throttled {
                kind,
                limit,
                used,
                retry_after,
            },
            String::new(),
        )
    }
    /// A provider 500.
    pub fn server_error() -> Self {
        Self::new(ErrKind::ServerError, String::new())
    }
    /// A provider 503.
    pub fn overloaded() -> Self {
        Self::new(ErrKind::Overloaded, String::new())
    }
    pub fn with_status(mut self, s: StatusCode) -> Self {
        self.status = Some(s);
        self
    }

    pub fn render(&self, dialect: Dialect) -> Response {
        match dialect {
            Dialect::OpenAi => self.render_openai(None),
            Dialect::DashScopeCompat => self.render_openai(Some(gen::uuid())),
            Dialect::Google => self.render_google(false),
            Dialect::GoogleCompat => self.render_google(true),
            Dialect::DashScope => self.render_dashscope(),
        }
    }

    fn render_openai(&self, request_id: Option<String>) -> Response {
        let compat = request_id.is_some();
        let mut etype = "invalid_request_error";
        let (status, message, code): (StatusCode, String, Option<&str>) = match &self.kind {
            ErrKind::Throttled { kind, limit, used, retry_after } => {
                let (what, unit) = match kind {
                    Throttle::Tokens => ("tokens", "tokens per min (TPM)"),
                    _ => ("requests", "requests per min (RPM)"),
                };
                etype = if compat {
                    if *kind == Throttle::Tokens { "limit_tokens" } else { "limit_requests" }
                } else {
                    what
                };
                let injected = if *kind == Throttle::Injected { " (injected fault)" } else { "" };
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Rate limit reached for {what} in organization org-stub on {unit}: Limit {limit}, Used {used}, Requested 1. Please try again in {retry_after}s.{injected} Visit https://platform.openai.com/account/rate-limits to learn more."),
                    Some(if compat { etype } else { "rate_limit_exceeded" }),
                )
            }
            ErrKind::ServerError => {
                etype = "server_error";
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server had an error while processing your request. Sorry about that!".to_string(),
                    None,
                )
            }
            ErrKind::Overloaded => {
                etype = "server_error";
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The engine is currently overloaded, please try again later.".to_string(),
                    None,
                )
            }
            ErrKind::BadRequest => (StatusCode::BAD_REQUEST, self.message.clone(), self.code),
            ErrKind::MalformedJson => (
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)".to_string(),
                None,
            ),
            ErrKind::MissingKey => (
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.".to_string(),
                Some("invalid_api_key"),
            ),
            ErrKind::InvalidKey(k) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    redact(k)
                ),
                Some("invalid_api_key"),
            ),
            ErrKind::ModelNotFound(m) => (
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist or you do not have access to it."),
                Some("model_not_found"),
            ),
            ErrKind::RouteNotFound { method, path } => (
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} {path})"),
                None,
            ),
        };
        let mut body = json!({
            "error": {
                "message": message,
                "type": etype,
                "param": self.param,
                "code": code,
            }
        });
        if let (Some(id), Value::Object(o)) = (request_id, &mut body) {
            o.insert("request_id".into(), Value::String(id));
        }
        json_response(self.status.unwrap_or(status), &body)
    }

    fn render_google(&self, wrap: bool) -> Response {
        let (status, gstatus, message, details): (StatusCode, &str, String, Option<Value>) =
            match &self.kind {
                ErrKind::Throttled { kind, limit, retry_after, .. } => {
                    let (metric, id) = match kind {
                        Throttle::Tokens => ("generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count", "GenerateContentPaidTierInputTokensPerModelPerMinute"),
                        _ => ("generativelanguage.googleapis.com/generate_content_paid_tier_requests", "GenerateRequestsPerMinutePerProjectPerModel"),
                    };
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        "RESOURCE_EXHAUSTED",
                        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.".to_string(),
                        Some(json!([
                            {
                                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                "violations": [{"quotaMetric": metric, "quotaId": id, "quotaValue": limit.to_string()}]
                            },
                            {
                                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": format!("{retry_after}s")
                            }
                        ])),
                    )
                }
                ErrKind::ServerError => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".to_string(),
                    None,
                ),
                ErrKind::Overloaded => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "The model is overloaded. Please try again later.".to_string(),
                    None,
                ),
                ErrKind::BadRequest => (
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    self.message.clone(),
                    None,
                ),
                ErrKind::MalformedJson => (
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    format!("Invalid JSON payload received. {}", self.message),
                    None,
                ),
                ErrKind::MissingKey => (
                    StatusCode::FORBIDDEN,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".to_string(),
                    None,
                ),
                ErrKind::InvalidKey(_) => (
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "API key not valid. Please pass a valid API key.".to_string(),
                    Some(json!([
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"}
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                            "locale": "en-US",
                            "message": "API key not valid. Please pass a valid API key."
                        }
                    ])),
                ),
                ErrKind::ModelNotFound(m) => (
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("models/{m} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."),
                    None,
                ),
                ErrKind::RouteNotFound { method, path } => (
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("The requested URL {path} was not found on this server ({method})."),
                    None,
                ),
            };
        let status = self.status.unwrap_or(status);
        let mut err = json!({"code": status.as_u16(), "message": message, "status": gstatus});
        if let (Some(d), Value::Object(o)) = (details, &mut err) {
            o.insert("details".into(), d);
        }
        let body = if wrap {
            json!([{ "error": err }])
        } else {
            json!({ "error": err })
        };
        json_response(status, &body)
    }

    fn render_dashscope(&self) -> Response {
        let (status, code, message): (StatusCode, &str, String) = match &self.kind {
            ErrKind::Throttled { kind, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                match kind {
                    Throttle::Requests => "Throttling.RateQuota",
                    Throttle::Tokens => "Throttling.AllocationQuota",
                    Throttle::Injected => "Throttling",
                },
                match kind {
                    Throttle::Tokens => {
                        "Allocated quota exceeded, please increase your quota limit."
                    }
                    Throttle::Requests => "Requests rate limit exceeded, please try again later.",
                    Throttle::Injected => "Requests throttling triggered.",
                }
                .to_string(),
            ),
            ErrKind::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occured, please try again later or contact service support."
                    .to_string(),
            ),
            ErrKind::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable, please try again later.".to_string(),
            ),
            ErrKind::BadRequest => (
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                self.message.clone(),
            ),
            ErrKind::MalformedJson => (
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("Request body is not valid JSON: {}", self.message),
            ),
            ErrKind::MissingKey => (
                StatusCode::UNAUTHORIZED,
                "InvalidApiKey",
                "No API-key provided.".to_string(),
            ),
            ErrKind::InvalidKey(_) => (
                StatusCode::UNAUTHORIZED,
                "InvalidApiKey",
                "Invalid API-key provided.".to_string(),
            ),
            ErrKind::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "ModelNotFound",
                "Model not exist.".to_string(),
            ),
            ErrKind::RouteNotFound { method, path } => (
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("Not found: {method} {path}"),
            ),
        };
        json_response(
            self.status.unwrap_or(status),
            &json!({"request_id": gen::uuid(), "code": code, "message": message}),
        )
    }
}

fn redact(k: &str) -> String {
    let chars: Vec<char> = k.chars().collect();
    if chars.len() <= 8 {
        return format!("{}****", chars.iter().take(4).collect::<String>());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***************{tail}")
}

fn type_phrase(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

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

// ---------------------------------------------------------------------------
// Completion planning
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

/// One generated answer, already split into stream pieces.
#[derive(Clone, Debug)]
pub struct Completion {
    pub pieces: Vec<Cow<'static, str>>,
    pub finish: Finish,
    /// `tokens::text` of the joined pieces.
    pub tokens: u64,
}

impl Completion {
    pub fn text(&self) -> String {
        gen::join(&self.pieces)
    }
}

/// Seed for a request: hash of the prompt value(s) and the client seed.
pub fn request_seed(prompt: &[&Value], seed: Option<i64>) -> u64 {
    let mut h = Hasher::default();
    for v in prompt {
        h.value(v);
    }
    h.u64(seed.unwrap_or(0) as u64);
    h.finish()
}

/// Default completion length for a seed: 20..=60 tokens.
pub fn default_length(seed: u64) -> usize {
    Rng::new(seed ^ 0x5EED).range(20, 60) as usize
}

fn chunk_ascii_4(s: String) -> Vec<Cow<'static, str>> {
    let mut out = Vec::with_capacity(s.len() / 4 + 1);
    let mut cur = String::with_capacity(4);
    for c in s.chars() {
        cur.push(c);
        if cur.chars().count() == 4 {
            out.push(Cow::Owned(std::mem::take(&mut cur)));
        }
    }
    if !cur.is_empty() {
        out.push(Cow::Owned(cur));
    }
    out
}

/// Generates a completion for `seed`: `target` tokens (or the default
/// length), capped at `max` (finish `Length`), truncated at the first stop
/// sequence (finish `Stop`). `tk` decides how pieces are built and counted:
/// with a BPE encoding each text piece is exactly one token.
pub fn complete(
    seed: u64,
    target: Option<usize>,
    max: Option<u64>,
    stops: &[String],
    format: &Format,
    tk: Tokenizer,
) -> Completion {
    let want = target.unwrap_or_else(|| default_length(seed));
    let (n, capped) = match max {
        Some(m) if (m as usize) < want => (m as usize, true),
        _ => (want, false),
    };
    let finish = if capped { Finish::Length } else { Finish::Stop };
    let pieces = match format {
        Format::Text => {
            let mut p = if tk.is_bpe() {
                gen::bpe_pieces(seed, n)
            } else {
                gen::pieces(seed, n)
            };
            if gen::apply_stop(&mut p, stops) {
                let tokens = tk.text(&gen::join(&p));
                return Completion {
                    pieces: p,
                    finish: Finish::Stop,
                    tokens,
                };
            }
            p
        }
        Format::JsonObject => chunk_ascii_4(gen::json_object_text(seed, n)),
        Format::JsonSchema(schema) => {
            let v = gen::value_from_schema(schema, &mut Rng::new(seed), 0);
            chunk_ascii_4(v.to_string())
        }
    };
    let tokens = match format {
        Format::Text => n as u64,
        _ => tk.text(&gen::join(&pieces)),
    };
    Completion {
        pieces,
        finish: if matches!(format, Format::JsonSchema(_)) {
            Finish::Stop
        } else {
            finish
        },
        tokens,
    }
}

// ---------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------

/// Cap on the artificial delay of a non-streaming response.
pub const MAX_UNARY_DELAY: Duration = Duration::from_millis(2000);

/// Seeded latency generator.
pub struct Pacer {
    rng: Rng,
    on: bool,
}

impl Pacer {
    pub fn new(latency: Latency, seed: u64) -> Self {
        Pacer {
            rng: Rng::new(seed ^ 0x1A7E_1C7E),
            on: latency == Latency::Realistic,
        }
    }

    /// Time to first token: 150–400 ms.
    pub fn ttft(&mut self) -> Duration {
        if self.on {
            Duration::from_millis(self.rng.range(150, 400))
        } else {
            Duration::ZERO
        }
    }

    /// Inter-token delay: 10–30 ms.
    pub fn inter(&mut self) -> Duration {
        if self.on {
            Duration::from_millis(self.rng.range(10, 30))
        } else {
            Duration::ZERO
        }
    }

    /// Total delay for a non-streaming response of `tokens` tokens (≤ 2 s).
    pub fn unary(&mut self, tokens: u64) -> Duration {
        if !self.on {
            return Duration::ZERO;
        }
        let mut d = self.ttft();
        for _ in 0..tokens {
            d += self.inter();
            if d >= MAX_UNARY_DELAY {
                return MAX_UNARY_DELAY;
            }
        }
        d
    }
}

pub async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tokens;

    #[test]
    fn completion_respects_target_max_and_stop() {
        let a = Tokenizer::Approx;
        let c = complete(1, Some(10), None, &[], &Format::Text, a);
        assert_eq!(c.tokens, 10);
        assert_eq!(c.finish, Finish::Stop);
        assert_eq!(tokens::text(&c.text()), 10);
        let c = complete(1, Some(10), Some(4), &[], &Format::Text, a);
        assert_eq!(c.tokens, 4);
        assert_eq!(c.finish, Finish::Length);
        let d = complete(1, None, None, &[], &Format::Text, a);
        assert!((20..=60).contains(&d.tokens));
        let j = complete(9, Some(12), None, &[], &Format::JsonObject, a);
        assert_eq!(j.tokens, 12);
        let _: Value = serde_json::from_str(&j.text()).unwrap();
    }

    #[test]
    fn bpe_completions_encode_to_exactly_the_reported_count() {
        for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
            for seed in 0..200u64 {
                for n in [1usize, 2, 7, 20, 61] {
                    let c = complete(seed, Some(n), None, &[], &Format::Text, tk);
                    assert_eq!(c.tokens, n as u64);
                    assert_eq!(c.pieces.len(), n);
                    assert_eq!(
                        tk.text(&c.text()),
                        n as u64,
                        "{tk:?} seed {seed} n {n}: {:?}",
                        c.text()
                    );
                    for p in &c.pieces {
                        assert_eq!(tk.text(p), 1, "{tk:?} piece {p:?}");
                    }
                }
            }
            let j = complete(3, Some(12), None, &[], &Format::JsonObject, tk);
            assert_eq!(j.tokens, tk.text(&j.text()));
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

    #[test]
    fn unary_delay_is_capped() {
        let mut p = Pacer::new(Latency::Realistic, 1);
        assert!(p.unary(1000) <= MAX_UNARY_DELAY);
        let mut off = Pacer::new(Latency::Off, 1);
        assert_eq!(off.unary(1000), Duration::ZERO);
    }
}
