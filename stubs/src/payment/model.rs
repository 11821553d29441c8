//! Stripe-shaped objects (payment intents, refunds, events) and errors.
//!
//! Replies are serialized once into a [`Reply`] so an idempotent replay can
//! return the stored bytes unchanged.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Lifecycle of a payment intent (the subset of Stripe's a manual-capture
/// flow with `confirm: true` goes through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// Declined: a new payment method would be needed.
    RequiresPaymentMethod,
    /// Authorized, waiting for capture.
    RequiresCapture,
    /// Captured.
    Succeeded,
    Canceled,
}

/// A payment intent as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub object: String,
    pub amount: i64,
    pub currency: String,
    pub status: IntentStatus,
    pub capture_method: String,
    pub amount_capturable: i64,
    pub amount_received: i64,
    /// Sum of the refunds so far (Stripe keeps it on the charge; the stub
    /// puts it on the intent, 0 until a refund).
    pub amount_refunded: i64,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
}

/// A refund of (part of) a captured payment intent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub object: String,
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub created: i64,
}

/// A webhook event: `data.object` is the intent or refund after the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub object: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A serialized response: status and the exact body bytes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        Reply {
            status,
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    pub fn ok<T: Serialize>(value: &T) -> Reply {
        Reply::json(StatusCode::OK, value)
    }

    pub fn response(&self) -> Response {
        let mut resp = Response::new(Body::from(self.body.clone()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// A Stripe error: `{"error": {"type", "code", "message", ...}}`.
#[derive(Clone, Debug)]
pub struct StripeError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub decline_code: Option<&'static str>,
    /// Boxed: the intent is large and errors travel in `Result`s.
    pub payment_intent: Option<Box<PaymentIntent>>,
}

impl StripeError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        StripeError {
            status,
            kind,
            code,
            message,
            param: None,
            decline_code: None,
            payment_intent: None,
        }
    }

    /// 400 `invalid_request_error` naming the offending parameter.
    pub fn param(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        );
        e.param = Some(param.to_string());
        e
    }

    pub fn api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API Key provided: expected `Authorization: Bearer sk_test_...`".into(),
        )
    }

    pub fn missing(kind: &str, id: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            format!("No such {kind}: '{id}'"),
        );
        e.param = Some("id".into());
        e
    }

    /// 400 `payment_intent_unexpected_state` carrying the current intent.
    pub fn unexpected_state(pi: &PaymentIntent, action: &str) -> Self {
        let status = serde_json::to_value(pi.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "payment_intent_unexpected_state",
            format!(
                "This PaymentIntent could not be {action} because it has a status of {status}."
            ),
        );
        e.payment_intent = Some(Box::new(pi.clone()));
        e
    }

    pub fn declined(pi: &PaymentIntent) -> Self {
        let mut e = Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "card_error",
            "card_declined",
            "Your card has insufficient funds.".into(),
        );
        e.decline_code = Some("insufficient_funds");
        e.payment_intent = Some(Box::new(pi.clone()));
        e
    }

    pub fn idempotency(status: StatusCode, code: &'static str, message: &str) -> Self {
        Self::new(status, "idempotency_error", code, message.into())
    }

    /// The injected 500 (`api_error`).
    pub fn server() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "An unknown error occurred (injected by the payment stub).".into(),
        )
    }

    pub fn not_found_url(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            format!("Unrecognized request URL ({path})."),
        )
    }

    pub fn reply(&self) -> Reply {
        let mut err = json!({"type": self.kind, "code": self.code, "message": self.message});
        if let Some(p) = &self.param {
            err["param"] = json!(p);
        }
        if let Some(d) = self.decline_code {
            err["decline_code"] = json!(d);
        }
        if let Some(pi) = &self.payment_intent {
            err["payment_intent"] = serde_json::to_value(pi).unwrap_or(Value::Null);
        }
        Reply::json(self.status, &json!({ "error": err }))
    }
}
