//! Token purchases end to end, with every part real: PostgreSQL (ledger, billing), a `redis-server`
//! (the data plane's balance accounts), and the payment stub's own code (`leaky_stubs::payment`)
//! served over HTTP in this process, its webhooks pointed at the control plane under the secret the
//! stub issued. The saga engine runs with the real adapters; its time is an injected clock that only
//! leaps forward (never behind the wall clock, which the API and the webhooks use), so backoff and
//! leases pass when a test says so.
//!
//! Every test ends with [`Stack::check`]: the ledger's accounting invariant, Redis `credited` equal
//! to the ledger's credited total, the credited total equal to the tokens of the completed purchases
//! (no double credit, nothing left from a compensated one), and the captured intents at the stub
//! exactly those of the completed purchases (no capture without credit, no credit without capture).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use leaky_control_plane::app::{self, Roles};
use leaky_control_plane::billing::adapters::{self, org_key, RedisMirror};
use leaky_control_plane::billing::payments_http::{HttpPayments, HttpPaymentsConfig};
use leaky_control_plane::billing::purchase::SKIPPED_NO_MIRROR;
use leaky_control_plane::billing::saga::SagaError;
use leaky_control_plane::billing::{Engine, KillPoint, KillWhen, Policy, Settings};
use leaky_control_plane::clock::Clock;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{db, ledger, tenancy};
use leaky_limit::balance::{self, BalanceState};
use leaky_limit::redis_server::RedisServer;
use leaky_stubs::payment::{PaymentConfig, WebhookConfig};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Wall time plus an offset that only grows: the engine's "now" never falls behind the API's.
#[derive(Debug, Default)]
struct LeapClock {
    ahead_ms: AtomicI64,
}

impl LeapClock {
    fn leap(&self, by: Duration) {
        self.ahead_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for LeapClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.ahead_ms.load(Ordering::SeqCst))
    }
}

fn policy() -> Policy {
    Policy {
        max_attempts: 4,
        max_compensation_attempts: 8,
        backoff_base: Duration::milliseconds(100),
        backoff_max: Duration::milliseconds(400),
        step_timeout: StdDuration::from_secs(3),
        lease: Duration::seconds(5),
        batch: 32,
        concurrency: 16,
    }
}

/// What one leap moves the engine's clock: past any backoff and any lease.
const LEAP: Duration = Duration::seconds(6);

struct Stack {
    app: common::TestApp,
    stub: String,
    http: reqwest::Client,
    _redis: RedisServer,
    redis_url: String,
    conn: redis::aio::MultiplexedConnection,
    clock: Arc<LeapClock>,
    org: Uuid,
}

async fn bind() -> (String, tokio::net::TcpListener) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (base, listener)
}

async fn stack() -> Stack {
    stack_on(common::fresh_db().await.unwrap()).await
}

/// The payment stub (no latency, webhooks retried fast, jittered so they arrive out of order).
async fn payment_stub() -> String {
    let cfg = PaymentConfig {
        latency: leaky_stubs::Latency::Off,
        webhooks: WebhookConfig {
            backoff_base: StdDuration::from_millis(50),
            backoff_max: StdDuration::from_millis(200),
            max_jitter: StdDuration::from_millis(50),
            ..WebhookConfig::default()
        },
        ..PaymentConfig::default()
    };
    let router = leaky_stubs::payment::router(&cfg);
    let (base, listener) = bind().await;
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn stack_on(url: String) -> Stack {
    let pool = db::pool(&url, 16).unwrap();
    db::migrate(&pool).await.unwrap();
    let stub = payment_stub().await;
    let http = reqwest::Client::new();
    let (base, listener) = bind().await;
    // The stub issues the endpoint's secret; the control plane verifies webhooks with it.
    let endpoint: Value = http
        .post(format!("{stub}/v1/webhook_endpoints"))
        .bearer_auth("sk_test_leaky")
        .json(&json!({"url": format!("{base}/v1/webhooks/payments"), "enabled_events": ["*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let settings = Settings {
        webhook_secret: endpoint["secret"].as_str().unwrap().to_owned(),
        ..Settings::default()
    };
    let state = ApiState::new(pool.clone(), AdminToken::new(common::TOKEN));
    state.set_migrated();
    let router = app::router_for(state, &Roles::all(), None, Arc::new(settings));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = common::TestApp {
        base,
        http: http.clone(),
        pool: pool.clone(),
        db_url: url,
    };
    let org = app.org("acme").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let redis = RedisServer::spawn().expect("redis-server");
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Stack {
        app,
        stub,
        http,
        redis_url: redis.url(),
        _redis: redis,
        conn,
        clock: Arc::default(),
        org,
    }
}

impl Stack {
    fn engine(&self) -> Engine {
        let payments = HttpPayments::new(HttpPaymentsConfig {
            base_url: self.stub.clone(),
            api_key: "sk_test_leaky".to_owned(),
            timeout: StdDuration::from_millis(300),
        })
        .unwrap();
        let mirror = Arc::new(RedisMirror::new(&self.redis_url).unwrap());
        let ports = adapters::ports(payments, self.app.pool.clone(), Some(mirror));
        Engine::new(self.app.pool.clone(), self.clock.clone(), ports, policy())
    }

    fn pool(&self) -> &PgPool {
        &self.app.pool
    }

    /// `POST /v1/orgs/{org}/purchases`; returns the purchase id (202 expected).
    async fn buy(&self, key: &str, tokens: i64) -> Uuid {
        let res = self
            .app
            .req(
                reqwest::Method::POST,
                &format!("/v1/orgs/{}/purchases", self.org),
            )
            .header("Idempotency-Key", key)
            .json(&json!({ "tokens": tokens }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn purchase(&self, id: Uuid) -> Value {
        let res = self.app.get(&format!("/v1/purchases/{id}")).await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn unfinished(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM billing.sagas WHERE state IN ('running', 'compensating')",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    /// Runs `engine` until no saga is unfinished, leaping the clock between rounds. A kill point
    /// ends it with the kill.
    async fn drive(&self, engine: &Engine) -> Result<(), SagaError> {
        for _ in 0..200 {
            // Any other failed round (e.g. the database restarting) is retried after the leap.
            if let Err(e @ SagaError::Killed(_)) = engine.run_until_idle().await {
                return Err(e);
            }
            if self.unfinished().await == 0 {
                return Ok(());
            }
            self.clock.leap(LEAP);
        }
        panic!("sagas still unfinished after 200 rounds");
    }

    async fn faults(&self, faults: Value) {
        let res = self
            .http
            .post(format!("{}/_stub/faults", self.stub))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    async fn stub_state(&self) -> Value {
        let url = format!("{}/_stub/state", self.stub);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn intent(&self, id: &str) -> Value {
        let state = self.stub_state().await;
        let intents = state["payment_intents"].as_array().unwrap();
        intents.iter().find(|pi| pi["id"] == id).unwrap().clone()
    }

    async fn mirror(&mut self) -> Option<BalanceState> {
        balance::read(&mut self.conn, &org_key(self.org))
            .await
            .unwrap()
    }

    /// The invariants every test ends with (see the module docs).
    async fn check(&mut self) {
        let b = ledger::balance(self.pool(), self.org).await.unwrap();
        assert!(b.holds(), "accounting invariant: {b:?}");
        let (credited, version) = ledger::credited_total(self.pool(), self.org).await.unwrap();
        match self.mirror().await {
            Some(st) => assert_eq!((st.credited, st.credited_version), (credited, version)),
            None => assert_eq!(credited, 0, "Redis has no account but the ledger credits"),
        }
        let completed: Vec<(i64, Option<String>)> = sqlx::query_as(
            "SELECT p.tokens, p.payment_intent FROM billing.purchases p
             JOIN billing.sagas s ON s.id = p.id WHERE s.state = 'completed' AND p.org_id = $1",
        )
        .bind(self.org)
        .fetch_all(self.pool())
        .await
        .unwrap();
        let sum: i64 = completed.iter().map(|(t, _)| t).sum();
        assert_eq!(
            credited, sum,
            "credited total = tokens of completed purchases"
        );
        let expected: BTreeSet<String> = completed.into_iter().filter_map(|(_, pi)| pi).collect();
        let state = self.stub_state().await;
        let captured: BTreeSet<String> = state["payment_intents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pi| pi["status"] == "succeeded" && pi["amount_refunded"] != pi["amount"])
            .map(|pi| pi["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(captured, expected, "captured intents = completed purchases");
        let attention: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing.sagas WHERE state = 'needs_attention'",
        )
        .fetch_one(self.pool())
        .await
        .unwrap();
        assert_eq!(attention, 0);
    }

    async fn outbox_kinds(&self, id: Uuid) -> Vec<String> {
        sqlx::query_scalar("SELECT type FROM outbox.events WHERE aggregate_id = $1 ORDER BY seq")
            .bind(id.to_string())
            .fetch_all(self.pool())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_purchase_completes_credits_the_ledger_and_redis_and_captures() {
    let mut s = stack().await;
    let id = s.buy("happy", 2_000_000).await;
    s.drive(&s.engine()).await.unwrap();
    let p = s.purchase(id).await;
    assert_eq!(p["status"], "completed", "{p}");
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(b.purchased, 2_000_000);
    let st = s.mirror().await.unwrap();
    assert_eq!((st.credited, st.credited_version), (2_000_000, b.version));
    let pi = s.intent(p["payment_intent"].as_str().unwrap()).await;
    assert_eq!(
        (pi["status"].as_str(), pi["amount_received"].as_i64()),
        (Some("succeeded"), Some(400))
    );
    assert_eq!(
        s.outbox_kinds(id).await,
        ["purchase.created", "purchase.completed"]
    );
    // The account the purchase raised is the one the org's API keys spend from at the proxies.
    let key = s
        .app
        .post(
            &format!("/v1/orgs/{}/keys", s.org),
            json!({"name": "ci", "tier": "pro"}),
        )
        .await
        .unwrap();
    assert_eq!(key.status(), 201);
    let mut conn = s.pool().acquire().await.unwrap();
    let keys = tenancy::feed::live_keys(&mut conn).await.unwrap();
    let proxy_org = keys[0].org.clone().unwrap();
    assert_eq!(balance::key(&proxy_org), balance::key(&org_key(s.org)));
    s.check().await;
}

/// Without `--redis-url` the mirror steps do not pretend: they are recorded as skipped.
#[tokio::test]
async fn without_a_mirror_the_balance_steps_are_recorded_as_skipped() {
    let mut s = stack().await;
    let id = s.buy("no-mirror", 1_000_000).await;
    let payments = HttpPayments::new(HttpPaymentsConfig {
        base_url: s.stub.clone(),
        api_key: "sk_test_leaky".to_owned(),
        timeout: StdDuration::from_millis(300),
    })
    .unwrap();
    let ports = adapters::ports(payments, s.pool().clone(), None);
    let engine = Engine::new(s.pool().clone(), s.clock.clone(), ports, policy());
    s.drive(&engine).await.unwrap();
    let p = s.purchase(id).await;
    assert_eq!(p["status"], "completed", "{p}");
    let raise = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == "raise_balance")
        .unwrap()
        .clone();
    assert_eq!(
        raise["detail"],
        json!({"skipped": SKIPPED_NO_MIRROR}),
        "{raise}"
    );
    assert_eq!(s.mirror().await, None, "nothing written to Redis");
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().purchased,
        1_000_000
    );
}

#[tokio::test]
async fn a_declined_card_compensates_and_credits_nothing() {
    let mut s = stack().await;
    s.faults(json!({"decline": 1})).await;
    let id = s.buy("declined", 1_000_000).await;
    s.drive(&s.engine()).await.unwrap();
    let p = s.purchase(id).await;
    assert_eq!(p["status"], "compensated", "{p}");
    assert_eq!(ledger::balance(s.pool(), s.org).await.unwrap().purchased, 0);
    assert_eq!(s.mirror().await, None, "Redis untouched");
    let pi = s.intent(p["payment_intent"].as_str().unwrap()).await;
    assert_ne!(pi["status"], "succeeded");
    assert_eq!(pi["amount_received"], 0);
    assert_eq!(
        s.outbox_kinds(id).await,
        ["purchase.created", "purchase.compensated"]
    );
    s.check().await;
}

#[tokio::test]
async fn lost_answers_on_authorize_and_capture_make_one_intent_and_one_capture() {
    let mut s = stack().await;
    for (n, fault) in ["apply_then_fail", "timeout"].into_iter().enumerate() {
        for op in ["create", "capture"] {
            s.faults(json!({ fault: 1, "timeout_ms": 500, "ops": [op] }))
                .await;
            let before = s.stub_state().await["payment_intents"]
                .as_array()
                .unwrap()
                .len();
            let id = s.buy(&format!("{fault}-{op}"), 1_000_000).await;
            s.drive(&s.engine()).await.unwrap();
            let p = s.purchase(id).await;
            assert_eq!(p["status"], "completed", "{fault} on {op}: {p}");
            let state = s.stub_state().await;
            assert_eq!(
                state["payment_intents"].as_array().unwrap().len(),
                before + 1,
                "one intent despite {fault} on {op}"
            );
            let pi = s.intent(p["payment_intent"].as_str().unwrap()).await;
            assert_eq!(pi["amount_received"], 200, "captured once");
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM billing.saga_steps WHERE saga_id = $1 AND status = 'failed'",
            )
            .bind(id)
            .fetch_one(s.pool())
            .await
            .unwrap();
            assert!(
                failed >= 1,
                "the fault was hit ({fault} on {op}, round {n})"
            );
        }
    }
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().purchased,
        4_000_000
    );
    s.check().await;
}

#[tokio::test]
async fn a_capture_failing_past_its_attempts_compensates_everything() {
    let mut s = stack().await;
    let kept = s.buy("kept", 1_000_000).await;
    s.drive(&s.engine()).await.unwrap();
    s.faults(json!({"error_5xx": 100, "ops": ["capture"]}))
        .await;
    let id = s.buy("failing", 3_000_000).await;
    s.drive(&s.engine()).await.unwrap();
    let p = s.purchase(id).await;
    assert_eq!(p["status"], "compensated", "{p}");
    assert_eq!(s.purchase(kept).await["status"], "completed");
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!((b.purchased, b.refunded), (4_000_000, 3_000_000));
    let st = s.mirror().await.unwrap();
    assert_eq!(
        (st.credited, st.credited_version),
        (1_000_000, b.version),
        "Redis lowered"
    );
    let pi = s.intent(p["payment_intent"].as_str().unwrap()).await;
    assert_eq!(pi["status"], "canceled");
    let steps: Vec<String> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["direction"] == "compensate" && r["status"] == "succeeded")
        .map(|r| r["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["reverse_credit", "release_balance", "cancel_payment"]
    );
    s.check().await;
}

/// Every kill point of the forward path (a purchase that completes) and of the compensations (a
/// capture that keeps failing): the engine dies there, a fresh one finishes the saga.
#[tokio::test]
async fn a_worker_killed_at_any_point_is_resumed_without_double_effects() {
    let mut s = stack().await;
    let forward = ["authorize", "credit", "raise_balance", "capture"];
    let back = ["reverse_credit", "release_balance", "cancel_payment"];
    let mut n = 0;
    for (steps, fail) in [(&forward[..], false), (&back[..], true)] {
        for step in steps {
            for when in [KillWhen::AfterEffect, KillWhen::AfterCommit] {
                n += 1;
                let faults = if fail {
                    json!({"error_5xx": 100, "ops": ["capture"]})
                } else {
                    json!({})
                };
                s.faults(faults).await;
                let id = s.buy(&format!("kill-{n}"), 1_000_000).await;
                let kill = KillPoint {
                    step: (*step).to_owned(),
                    when,
                };
                let killed = s.drive(&s.engine().with_kill(kill.clone())).await;
                assert!(
                    matches!(killed, Err(SagaError::Killed(_))),
                    "{kill:?}: {killed:?}"
                );
                s.drive(&s.engine()).await.unwrap();
                let p = s.purchase(id).await;
                let want = if fail { "compensated" } else { "completed" };
                assert_eq!(p["status"], want, "{kill:?}: {p}");
                s.check().await;
            }
        }
    }
    assert_eq!(n, 14);
}

/// h8's note: a credit that lands after the saga started compensating must not stick.
#[tokio::test]
async fn no_credit_once_the_saga_compensates() {
    let mut s = stack().await;
    s.faults(json!({"error_5xx": 100, "ops": ["capture"]}))
        .await;
    let id = s.buy("late-credit", 1_000_000).await;
    s.drive(&s.engine()).await.unwrap();
    assert_eq!(s.purchase(id).await["status"], "compensated");
    // A zombie worker's credit attempt for that purchase, after the reversal: refused.
    let ports = adapters::LedgerCredits::new(s.pool().clone());
    use leaky_control_plane::billing::ports::{Credits, PortError};
    let late = ports
        .credit_purchase(s.org, 1_000_000, &id.to_string(), None)
        .await;
    assert!(matches!(late, Err(PortError::Permanent(_))), "{late:?}");
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(b.purchased - b.refunded, 0);
    // The case a reversal cannot repair: it ran before the credit landed (found nothing), and the
    // credit arrives afterwards. The saga is compensating by then, so the credit is refused.
    let slow = s.buy("slow-credit", 5_000).await;
    sqlx::query(
        "UPDATE billing.sagas SET state = 'compensating', step = 'reverse_credit' WHERE id = $1",
    )
    .bind(slow)
    .execute(s.pool())
    .await
    .unwrap();
    ports
        .reverse_purchase(s.org, &slow.to_string())
        .await
        .unwrap();
    let late = ports
        .credit_purchase(s.org, 5_000, &slow.to_string(), None)
        .await;
    assert!(matches!(late, Err(PortError::Permanent(_))), "{late:?}");
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().purchased,
        1_000_000
    );
    sqlx::query("UPDATE billing.sagas SET state = 'compensated' WHERE id = $1")
        .bind(slow)
        .execute(s.pool())
        .await
        .unwrap();
    s.check().await;
}

#[tokio::test]
async fn duplicate_and_reordered_webhooks_have_one_effect_each() {
    let mut s = stack().await;
    s.faults(json!({"duplicate_webhooks": true})).await;
    let ids = [s.buy("w-1", 1_000_000).await, s.buy("w-2", 2_000_000).await];
    s.drive(&s.engine()).await.unwrap();
    // Wait for the stub to finish delivering (at least once, twice each).
    let mut state = s.stub_state().await;
    for _ in 0..100 {
        let pending = state["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "pending");
        if !pending {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        state = s.stub_state().await;
    }
    let deliveries = state["deliveries"].as_array().unwrap();
    assert!(
        deliveries.iter().all(|d| d["status"] == "delivered"),
        "{deliveries:?}"
    );
    let events: BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(deliveries.len(), 2 * events.len(), "every event sent twice");
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM billing.processed_webhooks")
            .fetch_all(s.pool())
            .await
            .unwrap();
    let recorded: BTreeSet<&str> = recorded.iter().map(String::as_str).collect();
    assert_eq!(recorded, events, "each event recorded once");
    for id in ids {
        assert_eq!(s.purchase(id).await["status"], "completed");
    }
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().purchased,
        3_000_000
    );
    s.check().await;
}

/// 100 purchases at once for one org, two engines, and PostgreSQL restarted mid-run: every purchase
/// completes, and the ledger and Redis hold exactly the sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_purchases_survive_a_postgres_restart() {
    let cluster = Arc::new(common::Cluster::start().unwrap());
    let url = common::fresh_db_on(&cluster.url()).await.unwrap();
    let s = Arc::new(tokio::sync::Mutex::new(stack_on(url).await));
    let (engines, app, base_org) = {
        let st = s.lock().await;
        ([st.engine(), st.engine()], st.app.base.clone(), st.org)
    };
    let http = reqwest::Client::new();
    let buys: Vec<_> = (0..100_i64)
        .map(|i| {
            let (http, app) = (http.clone(), app.clone());
            tokio::spawn(async move {
                // A failed attempt (the database restarting) is retried under the same key.
                for _ in 0..200 {
                    let res = http
                        .post(format!("{app}/v1/orgs/{base_org}/purchases"))
                        .bearer_auth(common::TOKEN)
                        .header("Idempotency-Key", format!("c-{i}"))
                        .json(&json!({ "tokens": 1_000 + i }))
                        .send()
                        .await;
                    if res.is_ok_and(|r| r.status().is_success()) {
                        return;
                    }
                    tokio::time::sleep(StdDuration::from_millis(50)).await;
                }
                panic!("purchase {i} never accepted");
            })
        })
        .collect();
    let pool = s.lock().await.pool().clone();
    let restart = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            // Mid-run: some purchases done, most not.
            loop {
                let done: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM billing.sagas WHERE state = 'completed'",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                if done >= 5 {
                    assert!(done < 100, "restart came too late to matter");
                    break;
                }
                tokio::time::sleep(StdDuration::from_millis(10)).await;
            }
            tokio::task::spawn_blocking(move || {
                cluster.stop().unwrap();
                cluster.restart().unwrap();
            })
            .await
            .unwrap();
        })
    };
    let drivers: Vec<_> = engines
        .into_iter()
        .map(|engine| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..400 {
                    let _ = engine.run_until_idle().await;
                    let st = s.lock().await;
                    st.clock.leap(Duration::milliseconds(500));
                    drop(st);
                    tokio::time::sleep(StdDuration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for b in buys {
        b.await.unwrap();
    }
    restart.await.unwrap();
    for d in &drivers {
        d.abort();
    }
    let mut st = s.lock().await;
    let engine = st.engine();
    st.clock.leap(LEAP);
    st.drive(&engine).await.unwrap();
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing.sagas WHERE state = 'completed'")
            .fetch_one(st.pool())
            .await
            .unwrap();
    assert_eq!(done, 100);
    let sum: i64 = (0..100).map(|i| 1_000 + i).sum();
    let b = ledger::balance(st.pool(), st.org).await.unwrap();
    assert_eq!((b.purchased, b.tokens), (sum, sum));
    assert_eq!(st.mirror().await.unwrap().credited, sum);
    st.check().await;
}

/// The worker as a replica runs it, polling only hourly: purchases made over HTTP while it waits start
/// at once (the creating transaction's `NOTIFY`), run side by side with the real adapters, and
/// account exactly.
#[tokio::test]
async fn purchases_start_at_once_while_the_worker_waits_for_its_poll() {
    let mut s = stack().await;
    let engine = s.engine();
    let mut rounds = engine.rounds();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.run(StdDuration::from_secs(3600), async {
        let _ = stopped.await;
    }));
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let keys: Vec<String> = (0..4).map(|i| format!("woken-{i}")).collect();
    let ids = futures::future::join_all(keys.iter().map(|k| s.buy(k, 1_000_000))).await;
    // The bound only turns a missing wake-up into a failure; the poll is an hour away.
    tokio::time::timeout(StdDuration::from_secs(30), async {
        while s.unfinished().await > 0 {
            rounds.changed().await.unwrap();
        }
    })
    .await
    .expect("every purchase ran without waiting for the poll");
    stop.send(()).unwrap();
    worker.await.unwrap();
    for id in ids {
        let p = s.purchase(id).await;
        assert_eq!(p["status"], "completed", "{p}");
    }
    s.check().await;
}

/// The process as `leaky-tokens control-plane` runs it: `run` spawns the saga worker with the real
/// ports (the stub, the ledger, Redis from `redis_url`) and the reconciler; a purchase made over
/// HTTP completes by itself, `/metrics` shows it, and shutdown drains the worker.
#[tokio::test]
async fn the_control_plane_process_runs_purchases_by_itself() {
    let url = common::fresh_db().await.unwrap();
    let stub = payment_stub().await;
    let redis = RedisServer::spawn().expect("redis-server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let endpoint: Value = http
        .post(format!("{stub}/v1/webhook_endpoints"))
        .bearer_auth("sk_test_leaky")
        .json(&json!({"url": format!("{base}/v1/webhooks/payments"), "enabled_events": ["*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut billing = leaky_control_plane::billing::BillingConfig::default();
    billing.settings.webhook_secret = endpoint["secret"].as_str().unwrap().to_owned();
    billing.payments.base_url = stub.clone();
    let config = leaky_control_plane::Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        database_url: url,
        roles: "admin-api".parse().unwrap(),
        admin_token: common::TOKEN.to_owned(),
        config_base: None,
        outbox: None,
        redis_url: Some(redis.url()),
        billing,
        notify: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leaky_control_plane::run(config, async {
        let _ = stopped.await;
    }));
    let req = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{base}{path}"))
            .bearer_auth(common::TOKEN)
    };
    let mut org = None;
    for _ in 0..200 {
        let res = req(reqwest::Method::POST, "/v1/orgs")
            .json(&json!({"name": "acme"}))
            .send()
            .await;
        if let Some(r) = res.ok().filter(|r| r.status() == 201) {
            org = Some(
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let org = org.expect("the control plane came up");
    let created: Value = req(reqwest::Method::POST, &format!("/v1/orgs/{org}/purchases"))
        .header("Idempotency-Key", "proc-1")
        .json(&json!({"tokens": 1_000_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/purchases/{}", created["id"].as_str().unwrap());
    let mut status = String::new();
    for _ in 0..200 {
        let p: Value = req(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = p["status"].as_str().unwrap().to_owned();
        if status != "pending" {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(status, "completed");
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let st = balance::read(&mut conn, &org).await.unwrap().unwrap();
    assert_eq!(st.credited, 1_000_000);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("leaky_sagas{state=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("leaky_saga_steps_total{result=\"succeeded\",step=\"capture\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("leaky_reconcile_corrections_total{kind=\"credited\"}"),
        "{metrics}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(StdDuration::from_secs(20), server)
        .await
        .expect("shutdown drains")
        .unwrap()
        .unwrap();
}
