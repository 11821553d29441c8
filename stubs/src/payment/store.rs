//! The stub's account: payment intents, refunds and the events their changes
//! raised. Pure state transitions (no I/O), run under one lock by the handlers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::model::{unix_now, Event, EventData, IntentStatus, PaymentIntent, Refund, StripeError};
use super::params::{CreateParams, RefundParams};
use crate::gen::mix;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Stripe-looking ids (`pi_` + 24 alphanumerics): a seeded counter run
/// through a mixer, so ids are unique within a run and differ between runs.
pub struct Ids {
    seed: u64,
    next: AtomicU64,
}

impl Ids {
    pub fn new(seed: u64) -> Self {
        Ids {
            seed,
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self, prefix: &str, len: usize) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut state = mix(self.seed ^ mix(n));
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            state = mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
            id.push(char::from(ALNUM[(state % ALNUM.len() as u64) as usize]));
        }
        id
    }
}

/// Everything the stub knows; `GET /_stub/state` dumps it.
#[derive(Default)]
pub struct Store {
    intents: HashMap<String, PaymentIntent>,
    /// Creation order of `intents`, for stable dumps.
    order: Vec<String>,
    refunds: Vec<Refund>,
    events: Vec<Event>,
    /// Events raised by the last operation, taken by the dispatcher.
    raised: Vec<Event>,
}

impl Store {
    fn raise(&mut self, ids: &Ids, kind: &str, object: Value) {
        let ev = Event {
            id: ids.next("evt_", 24),
            object: "event".into(),
            kind: kind.into(),
            created: unix_now(),
            data: EventData { object },
        };
        self.events.push(ev.clone());
        self.raised.push(ev);
    }

    fn raise_intent(&mut self, ids: &Ids, kind: &str, pi: &PaymentIntent) {
        self.raise(ids, kind, serde_json::to_value(pi).unwrap_or(Value::Null));
    }

    /// Events raised since the last call.
    pub fn take_raised(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.raised)
    }

    /// Authorizes (or, with `decline`, declines) a new intent.
    pub fn create(
        &mut self,
        ids: &Ids,
        p: CreateParams,
        decline: bool,
    ) -> Result<PaymentIntent, StripeError> {
        let mut pi = PaymentIntent {
            id: ids.next("pi_", 24),
            object: "payment_intent".into(),
            amount: p.amount,
            currency: p.currency,
            status: IntentStatus::RequiresCapture,
            capture_method: if p.manual { "manual" } else { "automatic" }.into(),
            amount_capturable: p.amount,
            amount_received: 0,
            amount_refunded: 0,
            metadata: p.metadata,
            created: unix_now(),
        };
        let kind = if decline {
            pi.status = IntentStatus::RequiresPaymentMethod;
            pi.amount_capturable = 0;
            "payment_intent.payment_failed"
        } else if p.manual {
            "payment_intent.amount_capturable_updated"
        } else {
            pi.status = IntentStatus::Succeeded;
            pi.amount_capturable = 0;
            pi.amount_received = pi.amount;
            "payment_intent.succeeded"
        };
        self.order.push(pi.id.clone());
        self.intents.insert(pi.id.clone(), pi.clone());
        self.raise_intent(ids, kind, &pi);
        if decline {
            return Err(StripeError::declined(&pi));
        }
        Ok(pi)
    }

    pub fn get(&self, id: &str) -> Result<PaymentIntent, StripeError> {
        self.intents
            .get(id)
            .cloned()
            .ok_or_else(|| StripeError::missing("payment_intent", id))
    }

    fn intent_mut(&mut self, id: &str) -> Result<&mut PaymentIntent, StripeError> {
        self.intents
            .get_mut(id)
            .ok_or_else(|| StripeError::missing("payment_intent", id))
    }

    pub fn capture(&mut self, ids: &Ids, id: &str) -> Result<PaymentIntent, StripeError> {
        let pi = self.intent_mut(id)?;
        if pi.status != IntentStatus::RequiresCapture {
            return Err(StripeError::unexpected_state(pi, "captured"));
        }
        pi.status = IntentStatus::Succeeded;
        pi.amount_received = pi.amount;
        pi.amount_capturable = 0;
        let pi = pi.clone();
        self.raise_intent(ids, "payment_intent.succeeded", &pi);
        Ok(pi)
    }

    pub fn cancel(&mut self, ids: &Ids, id: &str) -> Result<PaymentIntent, StripeError> {
        let pi = self.intent_mut(id)?;
        if !matches!(
            pi.status,
            IntentStatus::RequiresCapture | IntentStatus::RequiresPaymentMethod
        ) {
            return Err(StripeError::unexpected_state(pi, "canceled"));
        }
        pi.status = IntentStatus::Canceled;
        pi.amount_capturable = 0;
        let pi = pi.clone();
        self.raise_intent(ids, "payment_intent.canceled", &pi);
        Ok(pi)
    }

    /// Refunds `amount` (default: what is left) of a captured intent.
    pub fn refund(&mut self, ids: &Ids, p: RefundParams) -> Result<Refund, StripeError> {
        let pi = self.intents.get_mut(&p.payment_intent).ok_or_else(|| {
            let mut e = StripeError::missing("payment_intent", &p.payment_intent);
            e.param = Some("payment_intent".into());
            e
        })?;
        if pi.status != IntentStatus::Succeeded {
            return Err(StripeError::unexpected_state(pi, "refunded"));
        }
        let left = pi.amount_received - pi.amount_refunded;
        if left <= 0 {
            return Err(StripeError::param(
                "payment_intent",
                "charge_already_refunded",
                format!("PaymentIntent {} has already been refunded.", pi.id),
            ));
        }
        let amount = p.amount.unwrap_or(left);
        if amount > left {
            return Err(StripeError::param(
                "amount",
                "amount_too_large",
                format!("Refund amount ({amount}) is greater than the unrefunded amount ({left})."),
            ));
        }
        pi.amount_refunded += amount;
        let refund = Refund {
            id: ids.next("re_", 24),
            object: "refund".into(),
            payment_intent: pi.id.clone(),
            amount,
            currency: pi.currency.clone(),
            status: "succeeded".into(),
            created: unix_now(),
        };
        self.refunds.push(refund.clone());
        self.raise(
            ids,
            "charge.refunded",
            serde_json::to_value(&refund).unwrap_or(Value::Null),
        );
        Ok(refund)
    }

    pub fn refunds_of(&self, pi: Option<&str>) -> Vec<Refund> {
        self.refunds
            .iter()
            .filter(|r| pi.is_none_or(|id| r.payment_intent == id))
            .cloned()
            .collect()
    }

    pub fn intents(&self) -> Vec<PaymentIntent> {
        self.order
            .iter()
            .filter_map(|id| self.intents.get(id).cloned())
            .collect()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn params(amount: i64) -> CreateParams {
        CreateParams {
            amount,
            currency: "usd".into(),
            manual: true,
            metadata: Default::default(),
        }
    }

    #[test]
    fn ids_are_unique_and_stripe_shaped() {
        let ids = Ids::new(7);
        let a = ids.next("pi_", 24);
        let b = ids.next("pi_", 24);
        assert_ne!(a, b);
        assert_eq!(a.len(), 27);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn partial_refunds_add_up_to_the_amount_received() {
        let ids = Ids::new(1);
        let mut s = Store::default();
        let pi = s.create(&ids, params(100), false).unwrap();
        s.capture(&ids, &pi.id).unwrap();
        let r = |amount| RefundParams {
            payment_intent: pi.id.clone(),
            amount,
        };
        s.refund(&ids, r(Some(60))).unwrap();
        assert_eq!(
            s.refund(&ids, r(Some(41))).unwrap_err().code,
            "amount_too_large"
        );
        assert_eq!(s.refund(&ids, r(None)).unwrap().amount, 40);
        assert_eq!(
            s.refund(&ids, r(None)).unwrap_err().code,
            "charge_already_refunded"
        );
        assert_eq!(s.get(&pi.id).unwrap().amount_refunded, 100);
        let kinds: Vec<_> = s.take_raised().into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "payment_intent.amount_capturable_updated",
                "payment_intent.succeeded",
                "charge.refunded",
                "charge.refunded"
            ]
        );
    }
}
