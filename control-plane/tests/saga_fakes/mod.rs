//! In-process fakes of the saga's ports, for the orchestrator's tests only (its logic, on a real
//! PostgreSQL): a Stripe-like payment provider with idempotency keys and fault injection, a ledger
//! backed by a table in the test's own database, and a balance mirror that records what it is told.
//! The real adapters (the ledger's and the data plane's Rust APIs, the payment stub over HTTP) are
//! proven against the real services after the merge.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leaky_control_plane::billing::ports::{
    Authorize, BalanceMirror, Credits, PaymentIntent, Payments, PortError,
};
use leaky_control_plane::billing::Ports;
use sqlx::PgPool;
use uuid::Uuid;

/// What the next call of an operation does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 5xx before any effect.
    Fail,
    /// The effect happens, then the answer is lost (a 5xx or a timeout to the caller).
    ApplyThenFail,
    /// A card decline (authorize only).
    Decline,
    /// A permanent refusal.
    Refuse,
}

#[derive(Default)]
pub struct PayState {
    pub intents: HashMap<String, PaymentIntent>,
    /// Idempotency key → the intent id its first effect produced (replayed on reuse).
    pub keys: HashMap<String, String>,
    /// Every key `authorize` was called with, in order.
    pub authorize_keys: Vec<String>,
    pub faults: HashMap<&'static str, VecDeque<Fault>>,
    /// Operations that fail (transiently) on every call.
    pub broken: HashSet<&'static str>,
    pub refunds: u32,
    pub calls: HashMap<&'static str, u32>,
    /// Purchase id → calls in flight now, and the most ever seen at once.
    pub in_flight: HashMap<Uuid, u32>,
    pub max_in_flight: u32,
    /// Calls in flight now over every purchase, and the most ever seen at once.
    pub total_in_flight: u32,
    pub max_total_in_flight: u32,
    pub pi_purchase: HashMap<String, Uuid>,
}

/// A Stripe-like payment provider in memory.
#[derive(Default, Clone)]
pub struct FakePayments {
    pub state: Arc<Mutex<PayState>>,
    /// Each call takes this long (to let two engines overlap, should they both run one saga).
    pub latency: Duration,
    /// Runs once, right after the first effect of its operation (e.g. stops PostgreSQL).
    pub after_effect: Arc<Mutex<Option<Hook>>>,
    /// `(op, k)`: each call of `op` waits until `k` calls are in flight at once (over all purchases),
    /// so an engine that drives sagas one after another never gets past it (its step times out).
    pub gate: Option<(&'static str, u32)>,
    /// Notified on every call's entry (the gate's waiters re-check).
    pub entered: Arc<tokio::sync::Notify>,
}

/// An operation name and what to do after its effect.
pub type Hook = (&'static str, Box<dyn FnOnce() + Send>);

impl FakePayments {
    pub fn fault(&self, op: &'static str, faults: &[Fault]) {
        let mut s = self.state.lock().unwrap();
        s.faults
            .entry(op)
            .or_default()
            .extend(faults.iter().copied());
    }

    pub fn after_effect(&self, op: &'static str, hook: impl FnOnce() + Send + 'static) {
        *self.after_effect.lock().unwrap() = Some((op, Box::new(hook)));
    }

    fn run_hook(&self, op: &'static str) {
        let mut slot = self.after_effect.lock().unwrap();
        if slot.as_ref().is_some_and(|h| h.0 == op) {
            if let Some((_, hook)) = slot.take() {
                drop(slot);
                hook();
            }
        }
    }

    pub fn break_op(&self, op: &'static str) {
        self.state.lock().unwrap().broken.insert(op);
    }

    pub fn intent_of(&self, purchase: Uuid) -> Option<PaymentIntent> {
        let s = self.state.lock().unwrap();
        let id = s
            .pi_purchase
            .iter()
            .find(|(_, p)| **p == purchase)?
            .0
            .clone();
        s.intents.get(&id).cloned()
    }

    pub fn intents_for(&self, purchase: Uuid) -> usize {
        let s = self.state.lock().unwrap();
        s.pi_purchase.values().filter(|p| **p == purchase).count()
    }

    pub fn calls(&self, op: &'static str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    /// The next fault of `op`, counting the call and entering it for `purchase`.
    fn enter(&self, op: &'static str, purchase: Option<Uuid>) -> Option<Fault> {
        let mut s = self.state.lock().unwrap();
        *s.calls.entry(op).or_default() += 1;
        s.total_in_flight += 1;
        s.max_total_in_flight = s.max_total_in_flight.max(s.total_in_flight);
        self.entered.notify_waiters();
        if let Some(p) = purchase {
            let n = s.in_flight.entry(p).or_default();
            *n += 1;
            let n = *n;
            s.max_in_flight = s.max_in_flight.max(n);
        }
        if s.broken.contains(op) {
            return Some(Fault::Fail);
        }
        s.faults.get_mut(op).and_then(VecDeque::pop_front)
    }

    fn leave(&self, purchase: Option<Uuid>) {
        let mut s = self.state.lock().unwrap();
        s.total_in_flight -= 1;
        if let Some(p) = purchase {
            if let Some(n) = s.in_flight.get_mut(&p) {
                *n -= 1;
            }
        }
    }

    /// Waits at the gate of `op`, if it has one, until enough calls are in flight.
    async fn pass_gate(&self, op: &'static str) {
        let Some((_, k)) = self.gate.filter(|(g, _)| *g == op) else {
            return;
        };
        loop {
            // Created before the check: a call entering in between still wakes it. The gate stays
            // open once `k` were in at once (the first through may leave before the others look).
            let entered = self.entered.notified();
            if self.state.lock().unwrap().max_total_in_flight >= k {
                return;
            }
            entered.await;
        }
    }

    fn purchase_of(&self, pi: &str) -> Option<Uuid> {
        self.state.lock().unwrap().pi_purchase.get(pi).copied()
    }

    async fn call<T>(
        &self,
        op: &'static str,
        purchase: Option<Uuid>,
        effect: impl FnOnce(&mut PayState) -> Result<T, PortError>,
    ) -> Result<T, PortError> {
        let fault = self.enter(op, purchase);
        // Left on drop too: a call the engine's step timeout abandons is no longer in flight.
        let in_flight = InFlight {
            fake: self,
            purchase,
        };
        self.pass_gate(op).await;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let out = match fault {
            Some(Fault::Fail) => Err(PortError::Transient("503 from the fake".into())),
            Some(Fault::Decline) => Err(PortError::Declined {
                code: "card_declined".into(),
                payment_intent: None,
            }),
            Some(Fault::Refuse) => Err(PortError::Permanent("400 from the fake".into())),
            Some(Fault::ApplyThenFail) => {
                let _ = effect(&mut self.state.lock().unwrap());
                Err(PortError::Transient("answer lost".into()))
            }
            None => effect(&mut self.state.lock().unwrap()),
        };
        drop(in_flight);
        if out.is_ok() {
            self.run_hook(op);
        }
        out
    }
}

/// A call in flight; leaves on drop.
struct InFlight<'a> {
    fake: &'a FakePayments,
    purchase: Option<Uuid>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.fake.leave(self.purchase);
    }
}

fn transition(
    s: &mut PayState,
    pi: &str,
    from: &[&str],
    to: &str,
) -> Result<PaymentIntent, PortError> {
    let intent = s
        .intents
        .get_mut(pi)
        .ok_or_else(|| PortError::Permanent(format!("no intent {pi}")))?;
    if intent.status == to {
        return Ok(intent.clone());
    }
    if !from.contains(&intent.status.as_str()) {
        return Err(PortError::Permanent(format!("{pi} is {}", intent.status)));
    }
    intent.status = to.to_owned();
    if to == "succeeded" {
        intent.amount_received = intent.amount;
    }
    Ok(intent.clone())
}

#[async_trait]
impl Payments for FakePayments {
    async fn authorize(&self, req: &Authorize) -> Result<PaymentIntent, PortError> {
        self.state
            .lock()
            .unwrap()
            .authorize_keys
            .push(req.idempotency_key.clone());
        let req = req.clone();
        self.call("authorize", Some(req.purchase_id), move |s| {
            if let Some(id) = s.keys.get(&req.idempotency_key) {
                return Ok(s.intents[id].clone());
            }
            let id = format!("pi_{}", s.intents.len() + 1);
            let pi = PaymentIntent {
                id: id.clone(),
                status: "requires_capture".into(),
                amount: req.amount_cents,
                amount_received: 0,
                amount_refunded: 0,
            };
            s.intents.insert(id.clone(), pi.clone());
            s.keys.insert(req.idempotency_key.clone(), id.clone());
            s.pi_purchase.insert(id, req.purchase_id);
            Ok(pi)
        })
        .await
    }

    async fn capture(&self, pi: &str, _key: &str) -> Result<PaymentIntent, PortError> {
        let purchase = self.purchase_of(pi);
        let pi = pi.to_owned();
        self.call("capture", purchase, move |s| {
            transition(s, &pi, &["requires_capture"], "succeeded")
        })
        .await
    }

    async fn cancel(&self, pi: &str, _key: &str) -> Result<PaymentIntent, PortError> {
        let purchase = self.purchase_of(pi);
        let pi = pi.to_owned();
        self.call("cancel", purchase, move |s| {
            transition(s, &pi, &["requires_capture"], "canceled")
        })
        .await
    }

    async fn refund(&self, pi: &str, key: &str) -> Result<(), PortError> {
        let purchase = self.purchase_of(pi);
        let (pi, key) = (pi.to_owned(), key.to_owned());
        self.call("refund", purchase, move |s| {
            if s.keys.contains_key(&key) {
                return Ok(());
            }
            let intent = s
                .intents
                .get_mut(&pi)
                .ok_or_else(|| PortError::Permanent(pi.clone()))?;
            intent.amount_refunded = intent.amount;
            s.keys.insert(key, pi);
            s.refunds += 1;
            Ok(())
        })
        .await
    }

    async fn get(&self, pi: &str) -> Result<PaymentIntent, PortError> {
        let purchase = self.purchase_of(pi);
        let pi = pi.to_owned();
        self.call("get", purchase, move |s| {
            s.intents
                .get(&pi)
                .cloned()
                .ok_or_else(|| PortError::Permanent(format!("no intent {pi}")))
        })
        .await
    }
}

/// A ledger of purchase credits in a table of the test's own database (idempotent by ref, like the
/// real one): `version` counts the changes.
#[derive(Clone)]
pub struct TableCredits {
    pub pool: PgPool,
}

impl TableCredits {
    pub async fn new(pool: PgPool) -> TableCredits {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS test_credits (ref text PRIMARY KEY, org uuid NOT NULL,
             tokens bigint NOT NULL, expires_at timestamptz, reversed boolean NOT NULL DEFAULT false)",
        )
        .execute(&pool)
        .await
        .unwrap();
        TableCredits { pool }
    }

    /// (credited rows, reversed rows) for `purchase`.
    pub async fn rows(&self, purchase: Uuid) -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE reversed) FROM test_credits WHERE ref = $1",
        )
        .bind(purchase.to_string())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

fn db(e: sqlx::Error) -> PortError {
    PortError::Transient(e.to_string())
}

#[async_trait]
impl Credits for TableCredits {
    async fn credit_purchase(
        &self,
        org: Uuid,
        tokens: i64,
        purchase_ref: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PortError> {
        sqlx::query(
            "INSERT INTO test_credits (ref, org, tokens, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (ref) DO NOTHING",
        )
        .bind(purchase_ref)
        .bind(org)
        .bind(tokens)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn reverse_purchase(&self, org: Uuid, purchase_ref: &str) -> Result<(), PortError> {
        sqlx::query("UPDATE test_credits SET reversed = true WHERE ref = $1 AND org = $2")
            .bind(purchase_ref)
            .bind(org)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn credited_total(&self, org: Uuid) -> Result<(i64, i64), PortError> {
        sqlx::query_as(
            "SELECT coalesce(sum(tokens) FILTER (WHERE NOT reversed), 0)::bigint,
                    (count(*) + count(*) FILTER (WHERE reversed))::bigint
             FROM test_credits WHERE org = $1",
        )
        .bind(org)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }
}

/// A balance mirror that applies newer versions only and records every call.
#[derive(Default, Clone)]
pub struct RecordingMirror {
    pub calls: Arc<Mutex<Vec<(Uuid, i64, i64)>>>,
    pub current: Arc<Mutex<HashMap<Uuid, (i64, i64)>>>,
}

impl RecordingMirror {
    pub fn credited(&self, org: Uuid) -> i64 {
        self.current.lock().unwrap().get(&org).map_or(0, |c| c.0)
    }
}

#[async_trait]
impl BalanceMirror for RecordingMirror {
    async fn set_credited(
        &self,
        org: Uuid,
        credited: i64,
        version: i64,
    ) -> Result<bool, PortError> {
        self.calls.lock().unwrap().push((org, credited, version));
        let mut current = self.current.lock().unwrap();
        let newer = current.get(&org).is_none_or(|c| version > c.1);
        if newer {
            current.insert(org, (credited, version));
        }
        Ok(newer)
    }
}

/// The fakes, and the [`Ports`] an engine gets.
#[derive(Clone)]
pub struct Fakes {
    pub payments: FakePayments,
    pub credits: TableCredits,
    pub mirror: RecordingMirror,
}

impl Fakes {
    pub async fn new(pool: PgPool) -> Fakes {
        Fakes {
            payments: FakePayments::default(),
            credits: TableCredits::new(pool).await,
            mirror: RecordingMirror::default(),
        }
    }

    pub fn ports(&self) -> Ports {
        Ports {
            payments: Arc::new(self.payments.clone()),
            credits: Arc::new(self.credits.clone()),
            mirror: Arc::new(self.mirror.clone()),
        }
    }
}
