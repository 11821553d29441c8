//! The saga orchestrator on a real PostgreSQL, driving purchases created through the real admin API.
//! The ports are in-process fakes (`saga_fakes`): these are tests of the engine's logic — persistence,
//! retries, compensation, leases, crash recovery — not of the payment stub, the ledger or the data
//! plane, which are proven against the real services once merged. Time is a manual clock: backoff and
//! leases move only when a test advances it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use crate::saga_fakes::{Fakes, Fault};
use chrono::{Duration, Utc};
use leaky_control_plane::billing::purchase::{COMPENSATIONS, FORWARD};
use leaky_control_plane::billing::saga::SagaError;
use leaky_control_plane::billing::{self, Engine, KillPoint, KillWhen, Policy};
use leaky_control_plane::clock::{Clock, ManualClock};
use leaky_control_plane::db;
use leaky_control_plane::http::{AdminToken, ApiState};
use serde_json::{json, Value};
use uuid::Uuid;

struct Harness {
    app: common::TestApp,
    state: ApiState,
    clock: Arc<ManualClock>,
    fakes: Fakes,
    org: Uuid,
}

fn policy() -> Policy {
    Policy {
        max_attempts: 4,
        max_compensation_attempts: 4,
        backoff_base: Duration::seconds(1),
        backoff_max: Duration::seconds(8),
        step_timeout: StdDuration::from_secs(5),
        lease: Duration::seconds(30),
        batch: 16,
        concurrency: 16,
    }
}

async fn harness() -> Harness {
    harness_on(common::fresh_db().await.unwrap()).await
}

async fn harness_on(url: String) -> Harness {
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let state =
        ApiState::new(pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    let app = common::serve_state(url, state.clone()).await.unwrap();
    let fakes = Fakes::new(pool).await;
    let org = app.org("acme").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    Harness {
        app,
        state,
        clock,
        fakes,
        org,
    }
}

impl Harness {
    fn engine(&self) -> Engine {
        Engine::new(
            self.app.pool.clone(),
            self.clock.clone(),
            self.fakes.ports(),
            policy(),
        )
    }

    async fn buy(&self, tokens: i64) -> Uuid {
        let res = self
            .app
            .req(
                reqwest::Method::POST,
                &format!("/v1/orgs/{}/purchases", self.org),
            )
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&json!({ "tokens": tokens }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "pending");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn purchase(&self, id: Uuid) -> Value {
        let res = self.app.get(&format!("/v1/purchases/{id}")).await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Engine rounds, the clock moved past the longest backoff between them, until the purchase is
    /// no longer pending.
    async fn settle(&self, engine: &Engine, id: Uuid) -> Value {
        for _ in 0..40 {
            engine.run_until_idle().await.unwrap();
            let p = self.purchase(id).await;
            if p["status"] != "pending" {
                return p;
            }
            self.clock.advance(policy().backoff_max);
        }
        panic!("purchase {id} still pending: {}", self.purchase(id).await);
    }

    async fn events(&self, id: Uuid) -> Vec<String> {
        sqlx::query_scalar("SELECT type FROM outbox.events WHERE aggregate_id = $1 ORDER BY seq")
            .bind(id.to_string())
            .fetch_all(&self.app.pool)
            .await
            .unwrap()
    }

    async fn ledger_total(&self) -> i64 {
        use leaky_control_plane::billing::ports::Credits;
        self.fakes.credits.credited_total(self.org).await.unwrap().0
    }
}

fn steps(p: &Value) -> Vec<(String, String)> {
    p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let step = s["step"].as_str().unwrap().to_owned();
            (step, s["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn happy_path_authorizes_credits_raises_captures_once() {
    let h = harness().await;
    let id = h.buy(1_000_000).await;
    let p = h.settle(&h.engine(), id).await;
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(p["amount"], 200);
    let ok = |s: &str| (s.to_owned(), "succeeded".to_owned());
    assert_eq!(steps(&p), FORWARD.map(ok));
    let pi = h.fakes.payments.intent_of(id).unwrap();
    assert_eq!((pi.status.as_str(), pi.amount_received), ("succeeded", 200));
    assert_eq!(p["payment_intent"], pi.id);
    assert_eq!(h.fakes.credits.rows(id).await, (1, 0));
    assert_eq!(h.fakes.mirror.credited(h.org), 1_000_000);
    assert_eq!(
        h.events(id).await,
        ["purchase.created", "purchase.completed"]
    );
}

#[tokio::test]
async fn a_decline_compensates_with_its_reason_and_credits_nothing() {
    let h = harness().await;
    h.fakes.payments.fault("authorize", &[Fault::Decline]);
    let id = h.buy(500_000).await;
    let p = h.settle(&h.engine(), id).await;
    assert_eq!(p["status"], "compensated", "{p}");
    assert_eq!(p["reason"], "payment declined: card_declined");
    assert_eq!(h.fakes.credits.rows(id).await, (0, 0));
    assert_eq!(h.fakes.payments.calls("capture"), 0);
    assert_eq!(h.fakes.mirror.credited(h.org), 0);
    assert_eq!(
        h.events(id).await,
        ["purchase.created", "purchase.compensated"]
    );
}

#[tokio::test]
async fn transient_failures_retry_on_the_clock_with_the_same_idempotency_key() {
    let h = harness().await;
    h.fakes
        .payments
        .fault("authorize", &[Fault::ApplyThenFail, Fault::Fail]);
    let id = h.buy(1_000_000).await;
    let engine = h.engine();
    engine.run_until_idle().await.unwrap();
    assert_eq!(h.purchase(id).await["status"], "pending");
    // Not due before its backoff: nothing runs however often the engine looks.
    engine.run_until_idle().await.unwrap();
    assert_eq!(h.fakes.payments.calls("authorize"), 1);
    h.clock.advance(Duration::seconds(1));
    engine.run_until_idle().await.unwrap();
    assert_eq!(h.fakes.payments.calls("authorize"), 2);
    h.clock.advance(Duration::milliseconds(1999));
    engine.run_until_idle().await.unwrap();
    assert_eq!(
        h.fakes.payments.calls("authorize"),
        2,
        "the second backoff is 2 s"
    );
    h.clock.advance(Duration::milliseconds(1));
    engine.run_until_idle().await.unwrap();
    let p = h.purchase(id).await;
    assert_eq!(p["status"], "completed", "{p}");
    let keys = h
        .fakes
        .payments
        .state
        .lock()
        .unwrap()
        .authorize_keys
        .clone();
    assert_eq!(keys, vec![format!("purchase:{id}:authorize"); 3]);
    assert_eq!(
        h.fakes.payments.intents_for(id),
        1,
        "the lost answer authorized once"
    );
    let authorize: Vec<String> = steps(&p)
        .into_iter()
        .filter(|s| s.0 == "authorize")
        .map(|s| s.1)
        .collect();
    assert_eq!(authorize, ["failed", "failed", "succeeded"]);
}

#[tokio::test]
async fn a_compensation_failing_past_its_budget_needs_attention() {
    let h = harness().await;
    h.fakes.payments.break_op("capture");
    h.fakes.payments.break_op("cancel");
    let before = billing::needs_attention_total();
    let id = h.buy(1_000_000).await;
    let p = h.settle(&h.engine(), id).await;
    assert_eq!(p["status"], "needs_attention", "{p}");
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("compensation cancel_payment failed after 4 attempts"),
        "{reason}"
    );
    assert_eq!(h.fakes.payments.calls("capture"), 4);
    assert_eq!(h.fakes.payments.calls("cancel"), 4);
    // What could be undone was: the credit is reversed and the mirror lowered.
    assert_eq!(h.fakes.credits.rows(id).await, (1, 1));
    assert_eq!(h.fakes.mirror.credited(h.org), 0);
    assert!(billing::needs_attention_total() > before);
    assert_eq!(
        h.events(id).await,
        ["purchase.created", "purchase.needs_attention"]
    );
    let res = h.app.get("/v1/sagas?state=needs_attention").await.unwrap();
    let page: Value = res.json().await.unwrap();
    let saga = &page["items"][0];
    assert_eq!(saga["id"], id.to_string());
    assert_eq!(saga["needs_attention_reason"], reason);
    assert!(saga["reason"]
        .as_str()
        .unwrap()
        .starts_with("capture failed after 4 attempts"));
    assert!(saga["steps"].as_array().unwrap().len() >= 4 + 4 + 2 + 3);
}

/// Stops an engine at `kill`, then lets a fresh one (the lease expired) finish the purchase.
async fn crash_and_resume(h: &Harness, id: Uuid, kill: KillPoint) -> Value {
    let crashing = h.engine().with_kill(kill.clone());
    let err = crashing.run_until_idle().await.unwrap_err();
    assert!(
        err.to_string().contains("killed"),
        "{kill:?} not reached: {err}"
    );
    drop(crashing);
    h.clock.advance(policy().lease);
    h.settle(&h.engine(), id).await
}

#[tokio::test]
async fn killed_between_any_two_steps_every_purchase_completes_or_fully_compensates() {
    let h = harness().await;
    let whens = [KillWhen::AfterEffect, KillWhen::AfterCommit];
    for step in FORWARD {
        for when in whens {
            let id = h.buy(1_000).await;
            let kill = KillPoint {
                step: step.to_owned(),
                when,
            };
            let p = crash_and_resume(&h, id, kill.clone()).await;
            assert_eq!(p["status"], "completed", "{kill:?}: {p}");
            assert_eq!(
                h.fakes.credits.rows(id).await,
                (1, 0),
                "{kill:?}: credited once"
            );
            let pi = h.fakes.payments.intent_of(id).unwrap();
            assert_eq!(pi.status, "succeeded", "{kill:?}");
            assert_eq!(
                h.fakes.payments.intents_for(id),
                1,
                "{kill:?}: authorized once"
            );
        }
    }
    for step in COMPENSATIONS {
        for when in whens {
            h.fakes.payments.fault("capture", &[Fault::Refuse]);
            let id = h.buy(1_000).await;
            let kill = KillPoint {
                step: step.to_owned(),
                when,
            };
            let p = crash_and_resume(&h, id, kill.clone()).await;
            assert_eq!(p["status"], "compensated", "{kill:?}: {p}");
            assert_eq!(
                h.fakes.credits.rows(id).await,
                (1, 1),
                "{kill:?}: credit reversed"
            );
            let pi = h.fakes.payments.intent_of(id).unwrap();
            assert_eq!(
                pi.status, "canceled",
                "{kill:?}: no capture without its credit"
            );
        }
    }
    // Sixteen purchases: the eight completed ones are all the org holds, in the ledger and the mirror.
    assert_eq!(h.ledger_total().await, 8 * 1_000);
    assert_eq!(h.fakes.mirror.credited(h.org), 8 * 1_000);
    assert_eq!(h.fakes.payments.state.lock().unwrap().refunds, 0);
}

#[tokio::test]
async fn a_capture_lost_after_its_effect_then_refused_is_refunded_with_its_credit_reversed() {
    let h = harness().await;
    // The capture happens but its answer is lost; the retry is refused: the saga compensates, and the
    // provider's state (captured) decides the payment's compensation: a refund.
    h.fakes
        .payments
        .fault("capture", &[Fault::ApplyThenFail, Fault::Refuse]);
    let id = h.buy(2_000_000).await;
    let p = h.settle(&h.engine(), id).await;
    assert_eq!(p["status"], "compensated", "{p}");
    let pi = h.fakes.payments.intent_of(id).unwrap();
    assert_eq!(
        (pi.status.as_str(), pi.amount_refunded),
        ("succeeded", pi.amount)
    );
    assert_eq!(h.fakes.credits.rows(id).await, (1, 1));
    assert_eq!(h.fakes.mirror.credited(h.org), 0);
}

#[tokio::test]
async fn two_engines_on_one_database_never_run_one_saga_at_once() {
    let mut h = harness().await;
    h.fakes.payments.latency = StdDuration::from_millis(5);
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(h.buy(1_000).await);
    }
    let small = Policy {
        batch: 2,
        ..policy()
    };
    let engine = |h: &Harness| {
        Engine::new(
            h.app.pool.clone(),
            h.clock.clone(),
            h.fakes.ports(),
            small.clone(),
        )
    };
    let (a, b) = (engine(&h), engine(&h));
    let (ra, rb) = tokio::join!(a.run_until_idle(), b.run_until_idle());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra > 0 && rb > 0, "both engines worked: {ra} + {rb}");
    assert_eq!(ra + rb, 12, "each saga claimed once");
    for id in ids {
        assert_eq!(h.purchase(id).await["status"], "completed");
    }
    let s = h.fakes.payments.state.lock().unwrap();
    assert_eq!(s.max_in_flight, 1, "no saga had two calls in flight");
    assert_eq!(s.calls["authorize"], 12);
    assert_eq!(s.calls["capture"], 12);
}

#[tokio::test]
async fn postgres_restarted_between_a_capture_and_its_commit_the_purchase_completes_once() {
    let cluster = Arc::new(common::Cluster::start().unwrap());
    let h = harness_on(common::fresh_db_on(&cluster.url()).await.unwrap()).await;
    let down = cluster.clone();
    h.fakes
        .payments
        .after_effect("capture", move || down.stop().unwrap());
    let id = h.buy(1_000).await;
    let err = h.engine().run_until_idle().await.unwrap_err();
    assert!(matches!(err, SagaError::Db(_)), "{err}");
    cluster.restart().unwrap();
    h.clock.advance(policy().lease);
    let p = h.settle(&h.engine(), id).await;
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(h.fakes.payments.calls("capture"), 2, "the capture re-ran");
    assert_eq!(h.fakes.payments.intent_of(id).unwrap().status, "succeeded");
    assert_eq!(h.fakes.credits.rows(id).await, (1, 0));
    assert_eq!(h.fakes.mirror.credited(h.org), 1_000);
}

#[tokio::test]
async fn a_saga_whose_data_cannot_be_read_is_parked_visibly_and_the_others_run() {
    let h = harness().await;
    let broken = h.buy(1_000).await;
    let fine = h.buy(1_000).await;
    sqlx::query("UPDATE billing.sagas SET data = '{\"tokens\": \"many\"}' WHERE id = $1")
        .bind(broken)
        .execute(&h.app.pool)
        .await
        .unwrap();
    h.engine().run_until_idle().await.unwrap();
    let p = h.purchase(broken).await;
    assert_eq!(p["status"], "needs_attention", "{p}");
    assert!(
        p["reason"].as_str().unwrap().starts_with("saga data:"),
        "{p}"
    );
    assert_eq!(h.purchase(fine).await["status"], "completed");
}

#[tokio::test]
async fn a_hundred_concurrent_purchases_for_one_org_add_up_exactly() {
    let h = Arc::new(harness().await);
    let buys: Vec<_> = (1..=100_i64)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.buy(i * 1_000).await })
        })
        .collect();
    let mut ids = Vec::new();
    for b in buys {
        ids.push(b.await.unwrap());
    }
    let small = Policy {
        batch: 5,
        ..policy()
    };
    let engines: Vec<Engine> = (0..3)
        .map(|_| {
            Engine::new(
                h.app.pool.clone(),
                h.clock.clone(),
                h.fakes.ports(),
                small.clone(),
            )
        })
        .collect();
    let rounds = futures::future::join_all(engines.iter().map(Engine::run_until_idle)).await;
    let claims: usize = rounds.into_iter().map(Result::unwrap).sum();
    assert_eq!(claims, 100);
    for id in ids {
        assert_eq!(h.purchase(id).await["status"], "completed");
    }
    let sum = (1..=100_i64).sum::<i64>() * 1_000;
    assert_eq!(h.ledger_total().await, sum);
    assert_eq!(
        h.fakes.mirror.credited(h.org),
        sum,
        "the newest version won"
    );
}

#[tokio::test]
async fn the_background_worker_resumes_unfinished_sagas_and_stops_on_drain() {
    let h = harness().await;
    let id = h.buy(1_000).await;
    // A worker that died mid-saga: its lease still runs.
    sqlx::query("UPDATE billing.sagas SET locked_by = 'dead', locked_until = $2 WHERE id = $1")
        .bind(id)
        .bind(h.clock.now() + Duration::seconds(30))
        .execute(&h.app.pool)
        .await
        .unwrap();
    let worker = tokio::spawn(billing::worker(h.state.clone(), h.fakes.ports(), policy()));
    h.clock.advance(Duration::seconds(30));
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(20);
    while h.purchase(id).await["status"] == "pending" {
        assert!(tokio::time::Instant::now() < deadline, "not resumed");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(h.purchase(id).await["status"], "completed");
    h.state.drain();
    tokio::time::timeout(StdDuration::from_secs(5), worker)
        .await
        .expect("the worker stops on drain")
        .unwrap();
}

#[tokio::test]
async fn sagas_claimed_together_are_driven_side_by_side() {
    let mut h = harness().await;
    // Every `authorize` waits until all eight are in flight at once: an engine driving its batch one
    // saga after another would time each of them out instead.
    h.fakes.payments.gate = Some(("authorize", 8));
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(h.buy(1_000).await);
    }
    assert_eq!(h.engine().run_due().await.unwrap(), 8, "one batch");
    for id in ids {
        let p = h.purchase(id).await;
        assert_eq!(p["status"], "completed", "{p}");
        assert_eq!(h.fakes.payments.intents_for(id), 1);
    }
    let s = h.fakes.payments.state.lock().unwrap();
    assert_eq!(s.calls["authorize"], 8, "no authorize timed out and re-ran");
    assert_eq!(s.max_total_in_flight, 8);
    assert_eq!(s.max_in_flight, 1, "still one call at a time per saga");
}

#[tokio::test]
async fn a_batch_drives_no_more_sagas_at_once_than_its_concurrency() {
    let mut h = harness().await;
    h.fakes.payments.latency = StdDuration::from_millis(20);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(h.buy(1_000).await);
    }
    let two = Policy {
        concurrency: 2,
        ..policy()
    };
    let engine = Engine::new(h.app.pool.clone(), h.clock.clone(), h.fakes.ports(), two);
    assert_eq!(engine.run_due().await.unwrap(), 6);
    for id in ids {
        assert_eq!(h.purchase(id).await["status"], "completed");
    }
    let s = h.fakes.payments.state.lock().unwrap();
    assert!(s.max_total_in_flight <= 2, "{}", s.max_total_in_flight);
}

/// Runs `engine` as the background worker with an hour's poll, buys once its first round is over, and
/// returns the purchase once a later round ran it: only a wake-up can start that round in time.
async fn bought_while_the_worker_waits(h: &Harness, engine: Engine) -> Value {
    let mut rounds = engine.rounds();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.run(StdDuration::from_secs(3600), async {
        let _ = stopped.await;
    }));
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let id = h.buy(1_000).await;
    // The bound only turns a missing wake-up into a failure; the poll is an hour away.
    let p = tokio::time::timeout(StdDuration::from_secs(30), async {
        loop {
            rounds.changed().await.unwrap();
            let p = h.purchase(id).await;
            if p["status"] != "pending" {
                return p;
            }
        }
    })
    .await
    .expect("the worker ran the purchase without waiting for its poll");
    stop.send(()).unwrap();
    worker.await.unwrap();
    p
}

#[tokio::test]
async fn creating_a_purchase_wakes_this_process_worker_at_once() {
    let h = harness().await;
    let engine = h
        .engine()
        .with_wake(h.state.saga_wake.clone())
        .without_listener();
    let p = bought_while_the_worker_waits(&h, engine).await;
    assert_eq!(p["status"], "completed", "{p}");
}

#[tokio::test]
async fn creating_a_purchase_wakes_another_replica_worker_through_postgres() {
    let h = harness().await;
    // Its own in-process wake-up, which the API never touches: only `NOTIFY` reaches it.
    let p = bought_while_the_worker_waits(&h, h.engine()).await;
    assert_eq!(p["status"], "completed", "{p}");
}
