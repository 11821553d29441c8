//! Provider error dialects: [`ApiError`] and its OpenAI, Google and DashScope
//! renderings.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::json_response;
use crate::gen;

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

pub(super) fn type_phrase(v: &Value) -> &'static str {
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
