//! Subscriptions end to end, every part real: PostgreSQL (tenancy, ledger, billing), a `redis-server`
//! (the data plane's balance accounts) and the payment stub's own code served over HTTP in this
//! process. The API, the renewal job and the saga engines share one [`ManualClock`], so period ends,
//! proration and retries are exact and need no sleeps.
//!
//! Every test ends with [`Stack::check`]: the ledger's accounting invariant, Redis `credited` equal
//! to the ledger's credited total, that total equal to the tokens of the completed subscription
//! sagas (nothing left from a compensated one), and the captured intents at the stub exactly those of
//! the completed sagas (no charge without its grant, no grant without its charge).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use leaky_control_plane::billing::adapters::{self, org_key, RedisMirror};
use leaky_control_plane::billing::payments_http::{HttpPayments, HttpPaymentsConfig};
use leaky_control_plane::billing::saga::SagaError;
use leaky_control_plane::billing::subscription_store::{self, RenewalPolicy};
use leaky_control_plane::billing::{subscription, Engine, KillPoint, KillWhen, Policy, Settings};
use leaky_control_plane::clock::{Clock, ManualClock};
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{app, db, ledger, tenancy};
use leaky_limit::balance::{self, BalanceState};
use leaky_limit::redis_server::RedisServer;
use leaky_stubs::payment::PaymentConfig;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

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

fn renewals() -> RenewalPolicy {
    RenewalPolicy {
        max_failures: 3,
        retry_after: Duration::days(1),
        batch: 32,
    }
}

struct Stack {
    app: common::TestApp,
    stub: String,
    http: reqwest::Client,
    _redis: RedisServer,
    redis_url: String,
    conn: redis::aio::MultiplexedConnection,
    clock: Arc<ManualClock>,
    org: Uuid,
}

async fn bind() -> (String, tokio::net::TcpListener) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (base, listener)
}

async fn stack() -> Stack {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 16).unwrap();
    db::migrate(&pool).await.unwrap();
    let cfg = PaymentConfig {
        latency: leaky_stubs::Latency::Off,
        ..PaymentConfig::default()
    };
    let router = leaky_stubs::payment::router(&cfg);
    let (stub, listener) = bind().await;
    tokio::spawn(async move { axum::serve(listener, router).await });
    let clock = Arc::new(ManualClock::new(Utc::now().trunc_subsecs(0)));
    let state =
        ApiState::new(pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    let (base, listener) = bind().await;
    let router = app::router_for(
        state,
        &app::Roles::all(),
        None,
        Arc::new(Settings::default()),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let app = common::TestApp {
        base,
        http: http.clone(),
        pool,
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
    let s = Stack {
        app,
        stub,
        http,
        redis_url: redis.url(),
        _redis: redis,
        conn,
        clock,
        org,
    };
    s.plan("basic", "free", 1_000_000, 1000).await;
    s.plan("pro-monthly", "pro", 10_000_000, 2000).await;
    s.plan("max-monthly", "enterprise", 40_000_000, 9000).await;
    s
}

impl Stack {
    fn engine(&self) -> Engine {
        let payments = HttpPayments::new(HttpPaymentsConfig {
            base_url: self.stub.clone(),
            api_key: "sk_test_leaky".to_owned(),
            timeout: StdDuration::from_millis(500),
        })
        .unwrap();
        let mirror = Arc::new(RedisMirror::new(&self.redis_url).unwrap());
        let ports = adapters::ports(payments, self.pool().clone(), Some(mirror));
        Engine::new(self.pool().clone(), self.clock.clone(), ports, policy())
    }

    fn pool(&self) -> &PgPool {
        &self.app.pool
    }

    async fn plan(&self, name: &str, tier: &str, tokens: i64, cents: i64) {
        let res = self
            .app
            .req(reqwest::Method::PUT, &format!("/v1/plans/{name}"))
            .json(&json!({"tier": tier, "monthly_tokens": tokens, "price_cents": cents}))
            .send()
            .await
            .unwrap();
        // 201 created, 200 replaced.
        assert!(
            [200, 201].contains(&res.status().as_u16()),
            "{}",
            res.text().await.unwrap()
        );
    }

    /// A key of the org on its own tier `free`; returns its id.
    async fn key(&self) -> String {
        let path = format!("/v1/orgs/{}/keys", self.org);
        let res = self
            .app
            .post(&path, json!({"name": "ci", "tier": "free"}))
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// The tier the proxies get for the org's keys (the config feed's view).
    async fn proxy_tiers(&self) -> Vec<String> {
        let mut conn = self.pool().acquire().await.unwrap();
        let keys = tenancy::feed::live_keys(&mut conn).await.unwrap();
        keys.into_iter().map(|k| k.tier).collect()
    }

    async fn send(&self, method: reqwest::Method, body: Option<Value>, key: &str) -> (u16, Value) {
        let path = format!("/v1/orgs/{}/subscription", self.org);
        let mut req = self.app.req(method, &path).header("Idempotency-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn subscribe(&self, plan: &str) -> Value {
        let (status, body) = self
            .send(reqwest::Method::POST, Some(json!({"plan": plan})), "sub-1")
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    async fn subscription(&self) -> Value {
        self.send(reqwest::Method::GET, None, "-").await.1
    }

    async fn unfinished(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM billing.sagas WHERE state IN ('running', 'compensating')",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    /// Runs `engine` until no saga is unfinished, moving the clock past backoffs between rounds.
    async fn drive(&self, engine: &Engine) -> Result<(), SagaError> {
        for _ in 0..200 {
            if let Err(e @ SagaError::Killed(_)) = engine.run_until_idle().await {
                return Err(e);
            }
            if self.unfinished().await == 0 {
                return Ok(());
            }
            self.clock.advance(Duration::seconds(6));
        }
        panic!("sagas still unfinished after 200 rounds");
    }

    async fn renew(&self) -> usize {
        let now = self.clock.now();
        subscription_store::renew_due(self.pool(), now, &Settings::default(), &renewals())
            .await
            .unwrap()
    }

    async fn faults(&self, faults: Value) {
        let url = format!("{}/_stub/faults", self.stub);
        let res = self.http.post(url).json(&faults).send().await.unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    async fn intents(&self) -> Vec<Value> {
        let url = format!("{}/_stub/state", self.stub);
        let state: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state["payment_intents"].as_array().unwrap().clone()
    }

    /// Amounts captured and not refunded, in cents.
    async fn captured(&self) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .intents()
            .await
            .iter()
            .filter(|pi| pi["status"] == "succeeded" && pi["amount_refunded"] != pi["amount"])
            .map(|pi| pi["amount_received"].as_i64().unwrap())
            .collect();
        out.sort_unstable();
        out
    }

    async fn mirror(&mut self) -> Option<BalanceState> {
        balance::read(&mut self.conn, &org_key(self.org))
            .await
            .unwrap()
    }

    /// The subscription's saga events in order (its `subscription.created`, written with the create's
    /// audit row, is checked by the happy path and `domain_events.rs`).
    async fn outbox_kinds(&self, sub: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT type FROM outbox.events WHERE aggregate_id = $1 AND type <> 'subscription.created'
             ORDER BY seq",
        )
            .bind(sub)
            .fetch_all(self.pool())
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
        let done: Vec<Value> = sqlx::query_scalar(
            "SELECT data FROM billing.sagas WHERE kind = $1 AND state = 'completed' AND org_id = $2",
        )
        .bind(subscription::KIND)
        .bind(self.org)
        .fetch_all(self.pool())
        .await
        .unwrap();
        let granted: i64 = done.iter().map(|d| d["tokens"].as_i64().unwrap()).sum();
        assert_eq!(b.granted - b.refunded, granted, "grants = completed sagas");
        let paid: BTreeSet<String> = done
            .iter()
            .map(|d| d["payment_intent"].as_str().unwrap().to_owned())
            .collect();
        let captured: BTreeSet<String> = self
            .intents()
            .await
            .iter()
            .filter(|pi| pi["status"] == "succeeded" && pi["amount_refunded"] != pi["amount"])
            .map(|pi| pi["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(captured, paid, "captured intents = completed sagas");
        let attention: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM billing.sagas WHERE state = 'needs_attention'",
        )
        .fetch_one(self.pool())
        .await
        .unwrap();
        assert_eq!(attention, 0);
    }
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn subscribing_charges_grants_raises_the_mirror_and_moves_the_tier() {
    let mut s = stack().await;
    s.key().await;
    assert_eq!(s.proxy_tiers().await, ["free"]);
    let mut conn = s.pool().acquire().await.unwrap();
    let rev = tenancy::feed::revision(&mut conn).await.unwrap();
    let sub = s.subscribe("pro-monthly").await;
    assert_eq!(sub["state"], "pending");
    s.drive(&s.engine()).await.unwrap();
    let sub = s.subscription().await;
    assert_eq!(sub["state"], "active", "{sub}");
    assert_eq!(sub["period"], 1);
    let end = at(&sub["current_period_end"]);
    assert!(end > at(&sub["current_period_start"]) + Duration::days(27));
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(b.granted, 10_000_000);
    let st = s.mirror().await.unwrap();
    assert_eq!((st.credited, st.credited_version), (10_000_000, b.version));
    assert_eq!(s.captured().await, [2000]);
    // The proxies see the key re-tiered through the change feed (a delta since `rev`).
    assert_eq!(s.proxy_tiers().await, ["pro"]);
    let until = tenancy::feed::revision(&mut conn).await.unwrap();
    let changes = tenancy::feed::key_changes(&mut conn, rev, until)
        .await
        .unwrap();
    assert!(matches!(&changes[..], [tenancy::feed::KeyChange::Upsert(k)] if k.tier == "pro"));
    // Keys made later follow the plan too.
    s.key().await;
    assert_eq!(s.proxy_tiers().await, ["pro", "pro"]);
    // No key has tier `pro` of its own, but the org's plan gives it: the tier cannot be deleted.
    let res = s
        .app
        .req(reqwest::Method::DELETE, "/v1/tiers/pro")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let id = sub["id"].as_str().unwrap();
    assert_eq!(s.outbox_kinds(id).await, ["subscription.activated"]);
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox.events WHERE aggregate_id = $1 AND type = 'subscription.created'",
    )
    .bind(id)
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(created, 1);
    // A replay returns the same subscription; a second subscribe is a conflict.
    let (status, again) = s
        .send(
            reqwest::Method::POST,
            Some(json!({"plan": "pro-monthly"})),
            "sub-1",
        )
        .await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id)));
    let (status, _) = s
        .send(
            reqwest::Method::POST,
            Some(json!({"plan": "basic"})),
            "sub-2",
        )
        .await;
    assert_eq!(status, 409);
    s.check().await;
}

#[tokio::test]
async fn a_declined_subscribe_is_compensated_and_leaves_the_tier() {
    let mut s = stack().await;
    s.key().await;
    s.faults(json!({"decline": 1})).await;
    let sub = s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let sub2 = s.subscription().await;
    assert_eq!(sub2["state"], "incomplete", "{sub2}");
    assert_eq!(sub2["id"], sub["id"]);
    assert_eq!(ledger::balance(s.pool(), s.org).await.unwrap().granted, 0);
    assert_eq!(s.mirror().await, None, "Redis untouched");
    assert_eq!(s.proxy_tiers().await, ["free"]);
    assert!(s.captured().await.is_empty());
    assert!(s.outbox_kinds(sub["id"].as_str().unwrap()).await.is_empty());
    s.check().await;
}

#[tokio::test]
async fn an_upgrade_mid_period_charges_and_grants_the_exact_prorated_difference() {
    let mut s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let sub = s.subscription().await;
    let (start, end) = (
        at(&sub["current_period_start"]),
        at(&sub["current_period_end"]),
    );
    s.clock.advance(Duration::days(10) + Duration::seconds(7));
    let remaining = (end - s.clock.now()).num_seconds();
    let period = (end - start).num_seconds();
    let (status, body) = s
        .send(
            reqwest::Method::PATCH,
            Some(json!({"plan": "max-monthly"})),
            "-",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    s.drive(&s.engine()).await.unwrap();
    let cents = (7000 * i128::from(remaining) + i128::from(period) - 1) / i128::from(period);
    let tokens = 30_000_000 * i128::from(remaining) / i128::from(period);
    let mut expected = vec![2000, i64::try_from(cents).unwrap()];
    expected.sort_unstable();
    assert_eq!(s.captured().await, expected);
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(i128::from(b.granted), 10_000_000 + tokens);
    let sub = s.subscription().await;
    assert_eq!(
        (sub["state"].as_str(), sub["plan"].as_str()),
        (Some("active"), Some("max-monthly"))
    );
    assert_eq!(
        at(&sub["current_period_end"]),
        end,
        "the period is unchanged"
    );
    assert_eq!(s.proxy_tiers().await, ["enterprise"]);
    let kinds = s.outbox_kinds(sub["id"].as_str().unwrap()).await;
    assert_eq!(
        kinds,
        [
            "subscription.activated",
            "subscription.changed",
            "subscription.changed"
        ]
    );
    s.check().await;
}

#[tokio::test]
async fn a_downgrade_applies_at_the_period_end_only() {
    let mut s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let end = at(&s.subscription().await["current_period_end"]);
    let (status, body) = s
        .send(reqwest::Method::PATCH, Some(json!({"plan": "basic"})), "-")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["plan"].as_str(), body["pending_plan"].as_str()),
        (Some("pro-monthly"), Some("basic"))
    );
    assert_eq!(s.proxy_tiers().await, ["pro"]);
    s.clock.advance(end - s.clock.now() - Duration::seconds(1));
    assert_eq!(s.renew().await, 0, "not before the period end");
    s.clock.advance(Duration::seconds(1));
    assert_eq!(s.renew().await, 1);
    s.drive(&s.engine()).await.unwrap();
    let sub = s.subscription().await;
    assert_eq!(
        (sub["plan"].as_str(), sub["period"].as_i64()),
        (Some("basic"), Some(2))
    );
    assert_eq!(sub["pending_plan"], Value::Null);
    assert_eq!(at(&sub["current_period_start"]), end);
    assert_eq!(s.captured().await, [1000, 2000]);
    assert_eq!(s.proxy_tiers().await, ["free"]);
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(b.granted, 11_000_000);
    s.check().await;
}

#[tokio::test]
async fn a_cancel_ends_the_subscription_at_the_period_end() {
    let s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let end = at(&s.subscription().await["current_period_end"]);
    let (status, body) = s.send(reqwest::Method::DELETE, None, "-").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["state"].as_str(),
            body["cancel_at_period_end"].as_bool()
        ),
        (Some("active"), Some(true))
    );
    s.clock.advance(end - s.clock.now() - Duration::seconds(1));
    assert_eq!(s.renew().await, 0);
    assert_eq!(s.proxy_tiers().await, ["pro"]);
    s.clock.advance(Duration::seconds(1));
    assert_eq!(s.renew().await, 1);
    let sub = s.subscription().await;
    assert_eq!(sub["state"], "canceled");
    assert_eq!(
        s.proxy_tiers().await,
        ["free"],
        "keys back on their own tier"
    );
    assert_eq!(s.captured().await, [2000], "no renewal charge");
    // The unused grant expires with its block at the period end.
    ledger::expire_due(s.pool(), s.clock.now()).await.unwrap();
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert_eq!(b.expired, 10_000_000);
    let kinds = s.outbox_kinds(sub["id"].as_str().unwrap()).await;
    assert_eq!(
        kinds,
        [
            "subscription.activated",
            "subscription.changed",
            "subscription.canceled"
        ]
    );
    let b = ledger::balance(s.pool(), s.org).await.unwrap();
    assert!(b.holds());
}

#[tokio::test]
async fn a_renewal_is_charged_once_with_two_job_runners() {
    let mut s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let end = at(&s.subscription().await["current_period_end"]);
    s.clock.advance(end - s.clock.now());
    let (a, b) = tokio::join!(s.renew(), s.renew());
    assert_eq!(a + b, 1, "one runner claims the subscription");
    assert_eq!(s.renew().await, 0, "its renewal saga is in flight");
    let (e1, e2) = (s.engine(), s.engine());
    let (r1, r2) = tokio::join!(e1.run_until_idle(), e2.run_until_idle());
    r1.unwrap();
    r2.unwrap();
    s.drive(&e1).await.unwrap();
    let sub = s.subscription().await;
    assert_eq!(
        (sub["state"].as_str(), sub["period"].as_i64()),
        (Some("active"), Some(2))
    );
    assert_eq!(s.captured().await, [2000, 2000]);
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().granted,
        20_000_000
    );
    let kinds = s.outbox_kinds(sub["id"].as_str().unwrap()).await;
    assert_eq!(kinds, ["subscription.activated", "subscription.renewed"]);
    s.check().await;
}

#[tokio::test]
async fn a_declined_renewal_goes_past_due_then_canceled_with_the_tier_reverted() {
    let mut s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let end = at(&s.subscription().await["current_period_end"]);
    s.clock.advance(end - s.clock.now());
    s.faults(json!({"decline": 10})).await;
    for attempt in 1..=3 {
        assert_eq!(s.renew().await, 1, "attempt {attempt}");
        s.drive(&s.engine()).await.unwrap();
        let sub = s.subscription().await;
        let want = if attempt < 3 { "past_due" } else { "canceled" };
        assert_eq!(sub["state"], want, "attempt {attempt}: {sub}");
        assert_eq!(sub["renewal_failures"], attempt);
        assert_eq!(s.proxy_tiers().await, ["free"], "tier reverted");
        assert_eq!(s.renew().await, 0, "nothing before the retry is due");
        s.clock.advance(Duration::days(1));
    }
    assert_eq!(s.renew().await, 0, "a canceled subscription is not retried");
    assert_eq!(s.captured().await, [2000]);
    let sub = s.subscription().await;
    let kinds = s.outbox_kinds(sub["id"].as_str().unwrap()).await;
    assert_eq!(
        kinds,
        [
            "subscription.activated",
            "subscription.past_due",
            "subscription.past_due",
            "subscription.canceled"
        ]
    );
    s.check().await;
}

/// A worker killed at any point of the subscribe saga (after a step's effect, or after its commit)
/// leaves a saga a fresh worker finishes; killed while compensating a decline, one that a fresh
/// worker fully undoes. (Only `cancel_payment` is reachable by a payment fault: the stub cannot make
/// the later steps fail.)
#[tokio::test]
async fn a_subscribe_killed_at_any_point_completes_or_is_fully_compensated() {
    let steps = subscription::FORWARD
        .iter()
        .chain(["cancel_payment"].iter());
    for step in steps {
        for when in [KillWhen::AfterEffect, KillWhen::AfterCommit] {
            let mut s = stack().await;
            s.key().await;
            let compensating = *step == "cancel_payment";
            if compensating {
                s.faults(json!({"decline": 1})).await;
            }
            s.subscribe("pro-monthly").await;
            let kill = KillPoint {
                step: (*step).to_owned(),
                when,
            };
            let killed = s.drive(&s.engine().with_kill(kill)).await;
            assert!(
                killed.is_err(),
                "{step} {when:?}: the kill point was reached"
            );
            // A fresh worker resumes once the dead one's lease has passed.
            s.clock.advance(Duration::seconds(6));
            s.drive(&s.engine()).await.unwrap();
            let sub = s.subscription().await;
            let want = if compensating { "incomplete" } else { "active" };
            assert_eq!(sub["state"], want, "{step} {when:?}: {sub}");
            let tier = if compensating { "free" } else { "pro" };
            assert_eq!(s.proxy_tiers().await, [tier], "{step} {when:?}");
            let want_captured: &[i64] = if compensating { &[] } else { &[2000] };
            assert_eq!(s.captured().await, want_captured, "{step} {when:?}");
            s.check().await;
        }
    }
}

/// A plan whose tier was deleted after the plan was made: `set_tier` fails for good, so the subscribe
/// saga compensates every step (the tier put back, the grant reversed, the mirror lowered, the charge
/// refunded) — and a worker killed at any compensation leaves one a fresh worker finishes.
#[tokio::test]
async fn a_subscribe_failing_at_its_last_step_is_fully_compensated_even_when_killed() {
    let kills = subscription::COMPENSATIONS
        .iter()
        .flat_map(|s| [KillWhen::AfterEffect, KillWhen::AfterCommit].map(|w| Some((*s, w))));
    for kill in std::iter::once(None).chain(kills) {
        let mut s = stack().await;
        s.key().await;
        let tier = |m| s.app.req(m, "/v1/tiers/gold");
        let res = tier(reqwest::Method::PUT)
            .json(&json!({"limits": {"requests_per_minute": 60}}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        s.plan("gold-monthly", "gold", 5_000_000, 3000).await;
        let res = tier(reqwest::Method::DELETE).send().await.unwrap();
        assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
        s.subscribe("gold-monthly").await;
        if let Some((step, when)) = kill {
            let point = KillPoint {
                step: step.to_owned(),
                when,
            };
            let killed = s.drive(&s.engine().with_kill(point)).await;
            assert!(killed.is_err(), "{kill:?}: the kill point was reached");
            s.clock.advance(Duration::seconds(6));
        }
        s.drive(&s.engine()).await.unwrap();
        let sub = s.subscription().await;
        assert_eq!(sub["state"], "incomplete", "{kill:?}: {sub}");
        assert_eq!(s.proxy_tiers().await, ["free"], "{kill:?}");
        let b = ledger::balance(s.pool(), s.org).await.unwrap();
        assert_eq!((b.granted, b.refunded), (5_000_000, 5_000_000), "{kill:?}");
        let st = s.mirror().await.unwrap();
        assert_eq!(
            st.credited, 0,
            "{kill:?}: the mirror was raised, then lowered"
        );
        let refunded: Vec<i64> = s
            .intents()
            .await
            .iter()
            .map(|pi| pi["amount_refunded"].as_i64().unwrap())
            .collect();
        assert_eq!(refunded, [3000], "{kill:?}: the charge was refunded");
        s.check().await;
    }
}

#[tokio::test]
async fn a_past_due_subscription_paid_on_retry_is_active_again() {
    let mut s = stack().await;
    s.key().await;
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let end = at(&s.subscription().await["current_period_end"]);
    s.clock.advance(end - s.clock.now());
    s.faults(json!({"decline": 1})).await;
    assert_eq!(s.renew().await, 1);
    s.drive(&s.engine()).await.unwrap();
    assert_eq!(s.subscription().await["state"], "past_due");
    assert_eq!(s.proxy_tiers().await, ["free"]);
    s.clock.advance(Duration::days(1));
    assert_eq!(s.renew().await, 1);
    s.drive(&s.engine()).await.unwrap();
    let sub = s.subscription().await;
    assert_eq!(
        (sub["state"].as_str(), sub["period"].as_i64()),
        (Some("active"), Some(2))
    );
    assert_eq!(sub["renewal_failures"], 0);
    assert_eq!(s.proxy_tiers().await, ["pro"]);
    assert_eq!(s.captured().await, [2000, 2000]);
    assert_eq!(
        ledger::balance(s.pool(), s.org).await.unwrap().granted,
        20_000_000
    );
    let kinds = s.outbox_kinds(sub["id"].as_str().unwrap()).await;
    let want = [
        "subscription.activated",
        "subscription.past_due",
        "subscription.renewed",
    ];
    assert_eq!(kinds, want);
    s.check().await;
}

/// Bad input is a problem+json naming the field and writes nothing; every change is audited.
#[tokio::test]
async fn bad_input_names_the_field_writes_nothing_and_changes_are_audited() {
    let s = stack().await;
    let audits = s.app.audit_count().await.unwrap();
    let res = s
        .app
        .req(reqwest::Method::PUT, "/v1/plans/Bad Name")
        .json(&json!({"tier": "nope", "monthly_tokens": 0, "price_cents": -1, "currency": "USD"}))
        .send()
        .await
        .unwrap();
    let p = common::problem(res, 422, "validation").await.unwrap();
    let mut got = common::fields(&p);
    got.sort();
    let want = ["currency", "monthly_tokens", "name", "price_cents", "tier"];
    assert_eq!(got, want, "{p}");
    let (status, body) = s
        .send(reqwest::Method::POST, Some(json!({"plan": "nope"})), "k1")
        .await;
    assert_eq!(
        (status, common::fields(&body)),
        (422, vec!["plan".to_owned()])
    );
    let path = format!("/v1/orgs/{}/subscription", s.org);
    let res = s
        .app
        .req(reqwest::Method::POST, &path)
        .json(&json!({"plan": "basic"}))
        .send()
        .await
        .unwrap();
    let p = common::problem(res, 422, "validation").await.unwrap();
    assert_eq!(common::fields(&p), ["Idempotency-Key"]);
    let (status, _) = s
        .send(reqwest::Method::PATCH, Some(json!({"plan": "basic"})), "-")
        .await;
    assert_eq!(status, 404, "no subscription to change");
    let (status, _) = s.send(reqwest::Method::GET, None, "-").await;
    assert_eq!(status, 404);
    assert_eq!(
        s.app.audit_count().await.unwrap(),
        audits,
        "nothing written"
    );
    let subs: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.subscriptions")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(subs, 0);
    // A plan, a subscription, a downgrade and a cancel: one audit event each.
    s.plan("basic", "free", 1_000_000, 500).await;
    let res = s.app.get("/v1/plans").await.unwrap();
    let plans: Value = res.json().await.unwrap();
    let basic = plans["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "basic");
    assert_eq!(basic.unwrap()["price_cents"], 500, "PUT replaced the plan");
    s.subscribe("pro-monthly").await;
    s.drive(&s.engine()).await.unwrap();
    let (status, _) = s
        .send(reqwest::Method::PATCH, Some(json!({"plan": "basic"})), "-")
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.send(reqwest::Method::DELETE, None, "-").await;
    assert_eq!(status, 200);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit.events ORDER BY id OFFSET $1")
            .bind(audits)
            .fetch_all(s.pool())
            .await
            .unwrap();
    // The saga moving the org to the plan's tier is audited too (with its domain event).
    let want = [
        "plan.put",
        "subscription.create",
        "org.plan_tier",
        "subscription.update",
        "subscription.update",
    ];
    assert_eq!(actions, want);
}
