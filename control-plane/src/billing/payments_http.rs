//! [`Payments`] over HTTP against the Stripe-like payment provider (the payment stub in tests and the
//! stack). Maps the provider's answers onto [`PortError`]: 402 → declined; 5xx, 429, timeouts and
//! connection errors → transient (the effect may have happened: the engine retries with the same
//! `Idempotency-Key`); `payment_intent_unexpected_state` whose intent is already where we wanted it →
//! success; any other 4xx → permanent.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::ports::{Authorize, PaymentIntent, Payments, PortError};

/// The provider's base URL, API key and per-request timeout.
#[derive(Debug, Clone)]
pub struct HttpPaymentsConfig {
    pub base_url: String,
    pub api_key: String,
    pub timeout: Duration,
}

impl HttpPaymentsConfig {
    /// `LEAKY_PAYMENTS_URL` (default `http://127.0.0.1:18004`, the stack's payment stub),
    /// `LEAKY_PAYMENTS_API_KEY` (default `sk_test_leaky`), a 10 s timeout.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            base_url: var("LEAKY_PAYMENTS_URL", "http://127.0.0.1:18004"),
            api_key: var("LEAKY_PAYMENTS_API_KEY", "sk_test_leaky"),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP client of the payment provider.
#[derive(Debug, Clone)]
pub struct HttpPayments {
    http: reqwest::Client,
    config: HttpPaymentsConfig,
}

impl HttpPayments {
    pub fn new(config: HttpPaymentsConfig) -> Result<Self, PortError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| PortError::Permanent(format!("http client: {e}")))?;
        Ok(Self { http, config })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// POSTs `body` with `key` and returns the decoded 2xx body, or the mapped error.
    async fn post(&self, path: &str, key: &str, body: &Value) -> Result<Value, Failure> {
        let res = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.config.api_key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        read(res).await
    }
}

/// A non-2xx answer, before the caller decides what it means for its operation.
enum Failure {
    Port(PortError),
    /// `payment_intent_unexpected_state` with the intent's current state.
    UnexpectedState(PaymentIntent),
}

impl From<Failure> for PortError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Port(e) => e,
            Failure::UnexpectedState(pi) => {
                PortError::Permanent(format!("payment intent {} is {}", pi.id, pi.status))
            }
        }
    }
}

async fn read(res: Result<reqwest::Response, reqwest::Error>) -> Result<Value, Failure> {
    let res = res.map_err(|e| Failure::Port(PortError::Transient(e.to_string())))?;
    let status = res.status();
    let body: Value = match res.json().await {
        Ok(v) => v,
        Err(e) if status.is_success() => {
            return Err(Failure::Port(PortError::Transient(format!("body: {e}"))))
        }
        Err(_) => Value::Null,
    };
    if status.is_success() {
        return Ok(body);
    }
    Err(classify(status, &body))
}

/// What a non-2xx status and its `{"error": {...}}` body mean.
fn classify(status: StatusCode, body: &Value) -> Failure {
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or("").to_owned();
    let intent = || serde_json::from_value::<PaymentIntent>(error["payment_intent"].clone()).ok();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Failure::Port(PortError::Transient(format!("provider answered {status}")));
    }
    if status == StatusCode::PAYMENT_REQUIRED {
        let code = error["decline_code"].as_str().map_or(code, str::to_owned);
        return Failure::Port(PortError::Declined {
            code,
            payment_intent: intent().map(|pi| pi.id),
        });
    }
    if code == "payment_intent_unexpected_state" {
        if let Some(pi) = intent() {
            return Failure::UnexpectedState(pi);
        }
    }
    let message = error["message"].as_str().unwrap_or("");
    Failure::Port(PortError::Permanent(format!(
        "provider answered {status} {code}: {message}"
    )))
}

fn intent(v: Value) -> Result<PaymentIntent, PortError> {
    serde_json::from_value(v).map_err(|e| PortError::Permanent(format!("payment intent: {e}")))
}

/// Success when the intent already is in one of `done`, else the error the failure maps to.
fn settle(result: Result<Value, Failure>, done: &[&str]) -> Result<PaymentIntent, PortError> {
    match result {
        Ok(v) => intent(v),
        Err(Failure::UnexpectedState(pi)) if done.contains(&pi.status.as_str()) => Ok(pi),
        Err(f) => Err(f.into()),
    }
}

#[async_trait]
impl Payments for HttpPayments {
    async fn authorize(&self, req: &Authorize) -> Result<PaymentIntent, PortError> {
        let body = json!({
            "amount": req.amount_cents,
            "currency": req.currency,
            "capture_method": "manual",
            "confirm": true,
            "metadata": {"purchase_id": req.purchase_id, "org_id": req.org_id},
        });
        let v = self
            .post("/v1/payment_intents", &req.idempotency_key, &body)
            .await?;
        intent(v)
    }

    async fn capture(&self, pi: &str, key: &str) -> Result<PaymentIntent, PortError> {
        let path = format!("/v1/payment_intents/{pi}/capture");
        settle(self.post(&path, key, &json!({})).await, &["succeeded"])
    }

    async fn cancel(&self, pi: &str, key: &str) -> Result<PaymentIntent, PortError> {
        let path = format!("/v1/payment_intents/{pi}/cancel");
        let done = ["canceled", "requires_payment_method"];
        settle(self.post(&path, key, &json!({})).await, &done)
    }

    async fn refund(&self, pi: &str, key: &str) -> Result<(), PortError> {
        let body = json!({ "payment_intent": pi });
        self.post("/v1/refunds", key, &body).await?;
        Ok(())
    }

    async fn get(&self, pi: &str) -> Result<PaymentIntent, PortError> {
        let res = self
            .http
            .get(self.url(&format!("/v1/payment_intents/{pi}")))
            .bearer_auth(&self.config.api_key)
            .send()
            .await;
        intent(read(res).await?)
    }
}
