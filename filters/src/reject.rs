//! Typed rejections and their rendering in each provider's error dialect.
//!
//! Filters and the proxy produce a `Rejection`; `render` turns it into status + JSON body the caller's
//! SDK understands:
//! - OpenAI: `{"error":{"message","type","param","code"}}`
//! - Google: `{"error":{"code","message","status"}}`
//! - DashScope: `{"request_id","code","message"}`

use leaky_config::Dialect;
use serde_json::json;

/// Why a request was refused; fixes the status and each dialect's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// 400: malformed JSON, missing or invalid fields, bad framing.
    InvalidRequest,
    /// 401: missing, unknown or expired credential.
    Unauthenticated,
    /// 403: authenticated, but this model (or action) is not allowed.
    PermissionDenied,
    /// 404: no route for this path.
    NotFound,
    /// 404: the model is not served by this route.
    ModelNotFound,
    /// 405: the method is not served here.
    MethodNotAllowed,
    /// 413: the body exceeds the configured maximum.
    PayloadTooLarge,
    /// 429: a request-rate (or concurrency) limit was hit.
    RateLimited,
    /// 429: a token-rate limit was hit (OpenAI reports these with type `tokens`).
    TokensRateLimited,
    /// 429: a calendar quota (hour/day/month) is used up.
    QuotaExceeded,
    /// The org's prepaid balance cannot cover the request: 429 `insufficient_quota` (OpenAI), 429
    /// `RESOURCE_EXHAUSTED` (Google), 400 `Arrearage` (DashScope, as for an account in arrears).
    InsufficientBalance,
    /// 500: a bug or an unexpected state in the gateway.
    Internal,
    /// 502: the upstream failed or answered garbage.
    BadGateway,
    /// 503: no upstream is available.
    Unavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl RejectKind {
    pub fn status(self) -> u16 {
        match self {
            RejectKind::InvalidRequest => 400,
            RejectKind::Unauthenticated => 401,
            RejectKind::PermissionDenied => 403,
            RejectKind::NotFound | RejectKind::ModelNotFound => 404,
            RejectKind::MethodNotAllowed => 405,
            RejectKind::PayloadTooLarge => 413,
            RejectKind::RateLimited
            | RejectKind::TokensRateLimited
            | RejectKind::QuotaExceeded
            | RejectKind::InsufficientBalance => 429,
            RejectKind::Internal => 500,
            RejectKind::BadGateway => 502,
            RejectKind::Unavailable => 503,
            RejectKind::GatewayTimeout => 504,
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::InvalidRequest => "invalid_request",
            RejectKind::Unauthenticated => "unauthenticated",
            RejectKind::PermissionDenied => "permission_denied",
            RejectKind::NotFound => "not_found",
            RejectKind::ModelNotFound => "model_not_found",
            RejectKind::MethodNotAllowed => "method_not_allowed",
            RejectKind::PayloadTooLarge => "payload_too_large",
            RejectKind::RateLimited => "rate_limited",
            RejectKind::TokensRateLimited => "tokens_rate_limited",
            RejectKind::QuotaExceeded => "quota_exceeded",
            RejectKind::InsufficientBalance => "insufficient_balance",
            RejectKind::Internal => "internal",
            RejectKind::BadGateway => "bad_gateway",
            RejectKind::Unavailable => "unavailable",
            RejectKind::GatewayTimeout => "gateway_timeout",
        }
    }

    fn openai(self) -> (&'static str, Option<&'static str>) {
        match self {
            RejectKind::InvalidRequest => ("invalid_request_error", None),
            RejectKind::Unauthenticated => ("invalid_request_error", Some("invalid_api_key")),
            RejectKind::PermissionDenied => ("invalid_request_error", Some("model_not_allowed")),
            RejectKind::NotFound => ("invalid_request_error", Some("unknown_url")),
            RejectKind::ModelNotFound => ("invalid_request_error", Some("model_not_found")),
            RejectKind::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            RejectKind::PayloadTooLarge => ("invalid_request_error", Some("request_too_large")),
            RejectKind::RateLimited => ("requests", Some("rate_limit_exceeded")),
            RejectKind::TokensRateLimited => ("tokens", Some("rate_limit_exceeded")),
            RejectKind::QuotaExceeded | RejectKind::InsufficientBalance => {
                ("insufficient_quota", Some("insufficient_quota"))
            }
            RejectKind::Internal => ("server_error", None),
            RejectKind::BadGateway => ("server_error", Some("bad_gateway")),
            RejectKind::Unavailable => ("server_error", Some("service_unavailable")),
            RejectKind::GatewayTimeout => ("server_error", Some("timeout")),
        }
    }

    fn google(self) -> &'static str {
        match self {
            RejectKind::InvalidRequest | RejectKind::PayloadTooLarge => "INVALID_ARGUMENT",
            RejectKind::Unauthenticated => "UNAUTHENTICATED",
            RejectKind::PermissionDenied => "PERMISSION_DENIED",
            RejectKind::NotFound | RejectKind::ModelNotFound | RejectKind::MethodNotAllowed => {
                "NOT_FOUND"
            }
            RejectKind::RateLimited
            | RejectKind::TokensRateLimited
            | RejectKind::QuotaExceeded
            | RejectKind::InsufficientBalance => "RESOURCE_EXHAUSTED",
            RejectKind::Internal | RejectKind::BadGateway => "INTERNAL",
            RejectKind::Unavailable => "UNAVAILABLE",
            RejectKind::GatewayTimeout => "DEADLINE_EXCEEDED",
        }
    }

    fn dashscope(self) -> &'static str {
        match self {
            RejectKind::InvalidRequest
            | RejectKind::PayloadTooLarge
            | RejectKind::MethodNotAllowed => "InvalidParameter",
            RejectKind::Unauthenticated => "InvalidApiKey",
            RejectKind::PermissionDenied => "AccessDenied",
            RejectKind::NotFound => "NotFound",
            RejectKind::ModelNotFound => "ModelNotFound",
            RejectKind::RateLimited | RejectKind::TokensRateLimited => "Throttling",
            RejectKind::QuotaExceeded => "Throttling.AllocationQuota",
            RejectKind::InsufficientBalance => "Arrearage",
            RejectKind::Internal | RejectKind::BadGateway => "InternalError",
            RejectKind::Unavailable => "ServiceUnavailable",
            RejectKind::GatewayTimeout => "RequestTimeOut",
        }
    }
}

/// A refused request: what, why (for the caller) and, for OpenAI, which parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
    pub param: Option<&'static str>,
}

impl Rejection {
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The HTTP status in `dialect`: `status()`, except that DashScope reports an account that
    /// cannot pay (`Arrearage`) as 400, as its own API does.
    pub fn status_in(&self, dialect: Dialect) -> u16 {
        match (dialect, self.kind) {
            (Dialect::Dashscope, RejectKind::InsufficientBalance) => 400,
            _ => self.status(),
        }
    }

    /// The JSON error body in `dialect`. `request_id` is echoed where the dialect carries one.
    pub fn render(&self, dialect: Dialect, request_id: &str) -> Vec<u8> {
        let body = match dialect {
            Dialect::Openai => {
                let (kind, code) = self.kind.openai();
                json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": code}})
            }
            Dialect::Google => json!({"error": {
                "code": self.status_in(dialect), "message": self.message, "status": self.kind.google()
            }}),
            Dialect::Dashscope => json!({
                "request_id": request_id, "code": self.kind.dashscope(), "message": self.message
            }),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(b: Vec<u8>) -> Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn renders_openai_shape() {
        let r = Rejection::new(RejectKind::Unauthenticated, "Incorrect API key provided.");
        let v = parse(r.render(Dialect::Openai, "req-1"));
        assert_eq!(
            v,
            json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                   "param": null, "code": "invalid_api_key"}})
        );
        assert_eq!(r.status(), 401);
    }

    #[test]
    fn renders_google_shape() {
        let r = Rejection::new(RejectKind::RateLimited, "Quota exceeded.");
        let v = parse(r.render(Dialect::Google, "req-1"));
        assert_eq!(
            v,
            json!({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}})
        );
    }

    #[test]
    fn renders_dashscope_shape_with_request_id() {
        let r = Rejection::new(RejectKind::ModelNotFound, "Model not exist.").with_param("model");
        let v = parse(r.render(Dialect::Dashscope, "abc"));
        assert_eq!(
            v,
            json!({"request_id": "abc", "code": "ModelNotFound", "message": "Model not exist."})
        );
        assert_eq!(r.status(), 404);
    }

    #[test]
    fn insufficient_balance_in_each_dialect() {
        let r = Rejection::new(RejectKind::InsufficientBalance, "Buy more tokens.");
        let v = parse(r.render(Dialect::Openai, "id"));
        assert_eq!(
            (
                &v["error"]["type"],
                &v["error"]["code"],
                r.status_in(Dialect::Openai)
            ),
            (
                &json!("insufficient_quota"),
                &json!("insufficient_quota"),
                429
            )
        );
        let v = parse(r.render(Dialect::Google, "id"));
        assert_eq!(
            v,
            json!({"error": {"code": 429, "message": "Buy more tokens.", "status": "RESOURCE_EXHAUSTED"}})
        );
        let v = parse(r.render(Dialect::Dashscope, "id"));
        assert_eq!(
            v,
            json!({"request_id": "id", "code": "Arrearage", "message": "Buy more tokens."})
        );
        assert_eq!(r.status_in(Dialect::Dashscope), 400);
    }

    #[test]
    fn openai_carries_param() {
        let r = Rejection::new(RejectKind::InvalidRequest, "bad").with_param("model");
        assert_eq!(
            parse(r.render(Dialect::Openai, ""))["error"]["param"],
            "model"
        );
    }
}
