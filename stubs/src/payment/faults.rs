//! Payment-specific fault injection: counted faults on the next n matching
//! operations, set on the stub's config or at runtime (`POST /_stub/faults`),
//! and one-off faults from the `x-stub-fault` request header.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Request header naming a fault for that one request.
pub const H_PAYMENT_FAULT: &str = "x-stub-fault";

/// An operation faults can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentOp {
    Create,
    Capture,
    Cancel,
    Refund,
}

/// Faults still to inject. Each count is consumed by the matching operations
/// that follow (`ops`, default: all four). When several counts are armed, one
/// request takes one fault, in the order error_5xx, timeout, apply_then_fail,
/// decline. `decline` only applies to `create` (authorization is where cards
/// are declined).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentFaults {
    /// Decline the next n authorizations (402 `card_declined`).
    pub decline: u32,
    /// Answer the next n operations 500 without any effect.
    pub error_5xx: u32,
    /// Apply the next n operations, then hold the answer `timeout_ms`.
    pub timeout: u32,
    /// How long a `timeout` fault holds the answer (default 2000 ms).
    pub timeout_ms: u64,
    /// Send every webhook twice.
    pub duplicate_webhooks: bool,
    /// Never deliver the next n webhook deliveries.
    pub drop_webhooks: u32,
    /// Apply the next n operations, then answer 500 (a retry with the same
    /// `Idempotency-Key` gets the real result).
    pub apply_then_fail: u32,
    /// Operations the counted faults apply to (default: all).
    pub ops: Option<Vec<PaymentOp>>,
}

impl Default for PaymentFaults {
    fn default() -> Self {
        PaymentFaults {
            decline: 0,
            error_5xx: 0,
            timeout: 0,
            timeout_ms: 2000,
            duplicate_webhooks: false,
            drop_webhooks: 0,
            apply_then_fail: 0,
            ops: None,
        }
    }
}

/// The fault one request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Decline,
    /// 500 without effect.
    Error,
    /// Effect, then the answer after this long.
    Timeout(Duration),
    /// Effect, then a 500.
    ApplyThenFail,
}

fn take(n: &mut u32) -> bool {
    let armed = *n > 0;
    if armed {
        *n -= 1;
    }
    armed
}

impl PaymentFaults {
    fn covers(&self, op: PaymentOp) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }

    /// Consumes and returns the fault the next `op` gets, if any.
    pub fn take(&mut self, op: PaymentOp) -> Option<Fault> {
        if !self.covers(op) {
            return None;
        }
        if take(&mut self.error_5xx) {
            Some(Fault::Error)
        } else if take(&mut self.timeout) {
            Some(Fault::Timeout(Duration::from_millis(self.timeout_ms)))
        } else if take(&mut self.apply_then_fail) {
            Some(Fault::ApplyThenFail)
        } else if op == PaymentOp::Create && take(&mut self.decline) {
            Some(Fault::Decline)
        } else {
            None
        }
    }

    /// Whether the next webhook delivery is to be dropped (consumes one).
    pub fn take_drop(&mut self) -> bool {
        take(&mut self.drop_webhooks)
    }

    /// The fault named by the `x-stub-fault` header: `decline`, `error`,
    /// `timeout` (this plan's `timeout_ms`), `timeout=<ms>` or `apply-then-fail`.
    pub fn from_header(&self, headers: &HeaderMap) -> Option<Fault> {
        let v = headers.get(H_PAYMENT_FAULT)?.to_str().ok()?.trim();
        match v {
            "decline" => Some(Fault::Decline),
            "error" => Some(Fault::Error),
            "timeout" => Some(Fault::Timeout(Duration::from_millis(self.timeout_ms))),
            "apply-then-fail" => Some(Fault::ApplyThenFail),
            other => other
                .strip_prefix("timeout=")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Fault::Timeout(Duration::from_millis(ms))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_consumed_in_order_and_only_by_covered_ops() {
        let mut f = PaymentFaults {
            error_5xx: 1,
            decline: 1,
            apply_then_fail: 1,
            ops: Some(vec![PaymentOp::Create, PaymentOp::Capture]),
            ..PaymentFaults::default()
        };
        assert_eq!(f.take(PaymentOp::Refund), None);
        assert_eq!(f.take(PaymentOp::Capture), Some(Fault::Error));
        assert_eq!(f.take(PaymentOp::Capture), Some(Fault::ApplyThenFail));
        // decline is for authorizations only
        assert_eq!(f.take(PaymentOp::Capture), None);
        assert_eq!(f.take(PaymentOp::Create), Some(Fault::Decline));
        assert_eq!(f.take(PaymentOp::Create), None);
    }

    #[test]
    fn header_faults_parse() {
        let f = PaymentFaults::default();
        let mut h = HeaderMap::new();
        h.insert(H_PAYMENT_FAULT, "timeout=15".parse().unwrap());
        assert_eq!(
            f.from_header(&h),
            Some(Fault::Timeout(Duration::from_millis(15)))
        );
        h.insert(H_PAYMENT_FAULT, "apply-then-fail".parse().unwrap());
        assert_eq!(f.from_header(&h), Some(Fault::ApplyThenFail));
        h.insert(H_PAYMENT_FAULT, "bogus".parse().unwrap());
        assert_eq!(f.from_header(&h), None);
    }

    #[test]
    fn unknown_fault_fields_are_rejected() {
        let r: Result<PaymentFaults, _> = serde_json::from_str(r#"{"declines": 1}"#);
        assert!(r.is_err());
    }
}
