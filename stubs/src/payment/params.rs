//! Request bodies: JSON objects checked like Stripe checks its parameters
//! (unknown parameters are refused, every error names its `param`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::model::StripeError;

/// `POST /v1/payment_intents`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateParams {
    pub amount: i64,
    pub currency: String,
    /// `true` for `capture_method: "manual"` (the default here).
    pub manual: bool,
    pub metadata: BTreeMap<String, String>,
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundParams {
    pub payment_intent: String,
    pub amount: Option<i64>,
}

/// `POST /v1/webhook_endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointParams {
    pub url: String,
    pub enabled_events: Vec<String>,
}

/// The body as a JSON object; an empty body is `{}`.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, StripeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(StripeError::param(
            "body",
            "parameter_invalid_json",
            "The request body must be a JSON object.",
        )),
    }
}

fn only(o: &Map<String, Value>, allowed: &[&str]) -> Result<(), StripeError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(StripeError::param(
            k,
            "parameter_unknown",
            format!("Received unknown parameter: {k}"),
        )),
        None => Ok(()),
    }
}

fn positive_amount(o: &Map<String, Value>) -> Result<Option<i64>, StripeError> {
    match o.get("amount") {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(StripeError::param(
                "amount",
                "parameter_invalid_integer",
                "amount must be a positive integer in the currency's minor unit.",
            )),
        },
    }
}

fn metadata(o: &Map<String, Value>) -> Result<BTreeMap<String, String>, StripeError> {
    let bad = || {
        StripeError::param(
            "metadata",
            "parameter_invalid_metadata",
            "metadata must be an object of string values.",
        )
    };
    match o.get("metadata") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(bad)
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn currency(o: &Map<String, Value>) -> Result<String, StripeError> {
    match o.get("currency").and_then(Value::as_str) {
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(c.to_ascii_lowercase())
        }
        _ => Err(StripeError::param(
            "currency",
            "parameter_missing",
            "currency is required: a three-letter ISO code such as \"usd\".",
        )),
    }
}

pub fn create(body: &[u8]) -> Result<CreateParams, StripeError> {
    let o = object(body)?;
    only(
        &o,
        &[
            "amount",
            "currency",
            "capture_method",
            "confirm",
            "metadata",
        ],
    )?;
    let amount = positive_amount(&o)?
        .ok_or_else(|| StripeError::param("amount", "parameter_missing", "amount is required."))?;
    let currency = currency(&o)?;
    let manual = match o.get("capture_method").map(Value::as_str) {
        None | Some(Some("manual")) => true,
        Some(Some("automatic")) => false,
        _ => {
            return Err(StripeError::param(
                "capture_method",
                "parameter_invalid_string",
                "capture_method must be \"manual\" or \"automatic\".",
            ))
        }
    };
    if !matches!(o.get("confirm"), None | Some(Value::Bool(true))) {
        return Err(StripeError::param(
            "confirm",
            "parameter_invalid_boolean",
            "This stub only authorizes on creation: confirm must be true.",
        ));
    }
    let metadata = metadata(&o)?;
    Ok(CreateParams {
        amount,
        currency,
        manual,
        metadata,
    })
}

pub fn refund(body: &[u8]) -> Result<RefundParams, StripeError> {
    let o = object(body)?;
    only(&o, &["payment_intent", "amount", "reason", "metadata"])?;
    let payment_intent = match o.get("payment_intent").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            return Err(StripeError::param(
                "payment_intent",
                "parameter_missing",
                "payment_intent is required.",
            ))
        }
    };
    Ok(RefundParams {
        payment_intent,
        amount: positive_amount(&o)?,
    })
}

/// Capture and cancel take no parameters the stub uses; reject unknown ones.
pub fn empty(body: &[u8], allowed: &[&str]) -> Result<(), StripeError> {
    only(&object(body)?, allowed)
}

pub fn endpoint(body: &[u8]) -> Result<EndpointParams, StripeError> {
    let o = object(body)?;
    only(&o, &["url", "enabled_events", "description"])?;
    let url = match o.get("url").and_then(Value::as_str) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => u.to_string(),
        _ => {
            return Err(StripeError::param(
                "url",
                "url_invalid",
                "url must be an http(s) URL.",
            ))
        }
    };
    let bad = || {
        StripeError::param(
            "enabled_events",
            "parameter_invalid_array",
            "enabled_events must be a non-empty array of event types (or [\"*\"]).",
        )
    };
    let enabled_events: Vec<String> = match o.get("enabled_events") {
        None => vec!["*".to_string()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    Ok(EndpointParams {
        url,
        enabled_events,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn param_of(r: Result<CreateParams, StripeError>) -> Option<String> {
        r.err().and_then(|e| e.param)
    }

    #[test]
    fn create_errors_name_the_param() {
        assert_eq!(
            param_of(create(br#"{"currency":"usd"}"#)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(create(br#"{"amount":0,"currency":"usd"}"#)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(create(br#"{"amount":1.5,"currency":"usd"}"#)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(create(br#"{"amount":1}"#)).as_deref(),
            Some("currency")
        );
        assert_eq!(
            param_of(create(
                br#"{"amount":1,"currency":"usd","metadata":{"a":1}}"#
            ))
            .as_deref(),
            Some("metadata")
        );
        assert_eq!(
            param_of(create(br#"{"amount":1,"currency":"usd","color":"red"}"#)).as_deref(),
            Some("color")
        );
        assert_eq!(
            param_of(create(br#"{"amount":1,"currency":"usd","confirm":false}"#)).as_deref(),
            Some("confirm")
        );
    }

    #[test]
    fn a_valid_create_parses() {
        let p = create(br#"{"amount":500,"currency":"USD","capture_method":"manual","confirm":true,"metadata":{"org":"o1"}}"#).unwrap();
        assert_eq!(p.amount, 500);
        assert_eq!(p.currency, "usd");
        assert!(p.manual);
        assert_eq!(p.metadata.get("org").map(String::as_str), Some("o1"));
    }
}
