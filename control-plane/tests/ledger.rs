//! The token ledger against a real PostgreSQL: idempotent commands, optimistic concurrency under 50
//! concurrent writers, credit blocks and their expiry (two runners at once expire once), overdraft,
//! rebuild/verify after a seeded random mix, and the admin routes (balance, entries, grants). Every
//! test ends by checking the accounting invariant and that the live projection equals the replay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use leaky_control_plane::clock::ManualClock;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::ledger::{self, Kind, LedgerError};
use leaky_control_plane::{db, tenancy};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

async fn pool() -> anyhow::Result<PgPool> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 16)?;
    db::migrate(&pool).await?;
    Ok(pool)
}

async fn org(pool: &PgPool, name: &str) -> Uuid {
    tenancy::orgs::create(pool, "test", name).await.unwrap().id
}

/// The accounting invariant and "the projection is what the stream says".
async fn invariant(pool: &PgPool, org: Uuid) {
    let b = ledger::balance(pool, org).await.unwrap();
    assert!(b.holds(), "{b:?}");
    ledger::verify(pool, org).await.unwrap();
    let (credited, version) = ledger::credited_total(pool, org).await.unwrap();
    assert_eq!(credited, b.purchased + b.granted - b.refunded - b.expired);
    assert_eq!(version, b.version);
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, day, 0, 0, 0).unwrap()
}

#[tokio::test]
async fn commands_are_idempotent_by_ref() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "acme").await;
    let a = ledger::credit_purchase(&pool, org, 1000, "pur-1", None).await?;
    let again = ledger::credit_purchase(&pool, org, 1000, "pur-1", None).await?;
    assert_eq!(a, again);
    let reused = ledger::credit_purchase(&pool, org, 999, "pur-1", None).await;
    assert!(
        matches!(reused, Err(LedgerError::Mismatch(_))),
        "{reused:?}"
    );
    let g = ledger::grant(&pool, org, 500, "plan-2030-01", None).await?;
    assert_eq!(
        g,
        ledger::grant(&pool, org, 500, "plan-2030-01", None).await?
    );
    let c = ledger::consume(&pool, org, 300, "req-1").await?.unwrap();
    assert_eq!(Some(c), ledger::consume(&pool, org, 300, "req-1").await?);
    let r = ledger::reverse_purchase(&pool, org, "pur-1")
        .await?
        .unwrap();
    assert_eq!(
        Some(r.clone()),
        ledger::reverse_purchase(&pool, org, "pur-1").await?
    );
    // Consumption drew from the purchase first (both never expire; the purchase is older).
    assert_eq!((r.kind, r.tokens), (Kind::Refunded, 700));
    assert_eq!(
        ledger::reverse_purchase(&pool, org, "pur-unknown").await?,
        None
    );
    let b = ledger::balance(&pool, org).await?;
    assert_eq!(
        (
            b.purchased,
            b.granted,
            b.consumed,
            b.refunded,
            b.tokens,
            b.version
        ),
        (1000, 500, 300, 700, 500, 4)
    );
    // Each entry wrote its outbox event in its transaction.
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox.events WHERE topic = 'leaky.ledger.v1'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(events, 4);
    let bad = ledger::grant(&pool, org, 0, "g0", None).await;
    assert!(matches!(bad, Err(LedgerError::Invalid(_))), "{bad:?}");
    invariant(&pool, org).await;
    Ok(())
}

#[tokio::test]
async fn an_org_without_an_account_records_no_usage() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "free").await;
    assert_eq!(ledger::consume(&pool, org, 10, "req-1").await?, None);
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.version, b.tokens, b.consumed), (0, 0, 0));
    invariant(&pool, org).await;
    Ok(())
}

#[tokio::test]
async fn overdraft_is_recorded_and_repaid_by_the_next_credit() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "spender").await;
    ledger::credit_purchase(&pool, org, 100, "p1", None).await?;
    let c = ledger::consume(&pool, org, 130, "req-1").await?.unwrap();
    assert_eq!(c.data["overdraft"], json!(30));
    assert_eq!(ledger::balance(&pool, org).await?.tokens, -30);
    invariant(&pool, org).await;
    let g = ledger::grant(&pool, org, 50, "g1", Some(at(10))).await?;
    assert_eq!(g.data["repaid"], json!(30));
    assert_eq!(ledger::balance(&pool, org).await?.tokens, 20);
    // Only the 20 left of the grant can expire, not the 30 that paid the debt.
    assert_eq!(ledger::expire_due(&pool, at(11)).await?, 1);
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.expired, b.tokens), (20, 0));
    invariant(&pool, org).await;
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_writers_lose_no_update() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "busy").await;
    ledger::credit_purchase(&pool, org, 1_000_000, "seed", None).await?;
    let mut tasks = Vec::new();
    for i in 0..50_i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            if i % 5 == 0 {
                ledger::grant(&pool, org, 1000 + i, &format!("g-{i}"), Some(at(20))).await?;
            } else {
                ledger::consume(&pool, org, 10 + i, &format!("req-{i}")).await?;
            }
            // And a duplicate of each, racing the others.
            ledger::consume(&pool, org, 10 + i, &format!("req-{i}")).await?;
            Ok::<_, LedgerError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM ledger.entries WHERE org_id = $1 ORDER BY version")
            .bind(org)
            .fetch_all(&pool)
            .await?;
    let n = i64::try_from(versions.len())?;
    assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "dense versions");
    assert_eq!(n, 1 + 10 + 50);
    let granted: i64 = (0..50).filter(|i| i % 5 == 0).map(|i| 1000 + i).sum();
    let consumed: i64 = (0..50).map(|i| 10 + i).sum();
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.granted, b.consumed, b.version), (granted, consumed, n));
    assert_eq!(b.tokens, 1_000_000 + granted - consumed);
    invariant(&pool, org).await;
    Ok(())
}

#[tokio::test]
async fn expiry_takes_only_what_remains_and_two_runners_expire_once() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "expiring").await;
    ledger::grant(&pool, org, 100, "late", Some(at(20))).await?;
    ledger::credit_purchase(&pool, org, 100, "never", None).await?;
    ledger::grant(&pool, org, 100, "soon", Some(at(10))).await?;
    // Draws from "soon" (100), then "late" (20); "never" untouched.
    let c = ledger::consume(&pool, org, 120, "req-1").await?.unwrap();
    assert_eq!(c.data["draws"].as_array().map(Vec::len), Some(2));
    assert_eq!(ledger::expire_due(&pool, at(9)).await?, 0);
    // "soon" is empty: nothing to expire at day 15.
    assert_eq!(ledger::expire_due(&pool, at(15)).await?, 0);
    // Two runners at once on day 21: "late" (80 left) expires once.
    let (a, b) = tokio::join!(
        ledger::expire_due(&pool, at(21)),
        ledger::expire_due(&pool, at(21))
    );
    assert_eq!(a? + b?, 1);
    assert_eq!(ledger::expire_due(&pool, at(22)).await?, 0);
    let expired: Vec<(i64, String)> = sqlx::query_as(
        "SELECT tokens, ref FROM ledger.entries WHERE org_id = $1 AND kind = 'expired'",
    )
    .bind(org)
    .fetch_all(&pool)
    .await?;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, 80);
    assert!(expired[0].1.starts_with("expire:"));
    let bal = ledger::balance(&pool, org).await?;
    assert_eq!((bal.expired, bal.tokens), (80, 100));
    invariant(&pool, org).await;
    Ok(())
}

#[tokio::test]
async fn many_blocks_expire_once_under_concurrent_runners() -> anyhow::Result<()> {
    let pool = pool().await?;
    let orgs = [org(&pool, "o1").await, org(&pool, "o2").await];
    for (i, o) in orgs.iter().cycle().take(40).enumerate() {
        ledger::grant(&pool, *o, 10, &format!("g{i}"), Some(at(2))).await?;
    }
    let runs = (0..4).map(|_| ledger::expire_due(&pool, at(3)));
    let total: u64 = futures::future::try_join_all(runs).await?.into_iter().sum();
    assert_eq!(total, 40);
    for o in orgs {
        let b = ledger::balance(&pool, o).await?;
        assert_eq!((b.expired, b.tokens), (200, 0));
        invariant(&pool, o).await;
    }
    Ok(())
}

/// splitmix64: a seeded, dependency-free RNG for the random mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> i64 {
        i64::try_from(self.next() % n).unwrap()
    }
}

async fn random_step(pool: &PgPool, org: Uuid, rng: &mut Rng, i: i64) -> anyhow::Result<()> {
    let expiry = Some(at(1) + Duration::days(1 + rng.below(20)));
    match rng.below(10) {
        0 | 1 => drop(
            ledger::credit_purchase(pool, org, 1 + rng.below(500), &format!("p{i}"), expiry)
                .await?,
        ),
        2 => drop(ledger::grant(pool, org, 1 + rng.below(300), &format!("g{i}"), None).await?),
        3 => drop(
            ledger::reverse_purchase(pool, org, &format!("p{}", rng.below(u64::try_from(i)? + 1)))
                .await?,
        ),
        4 => drop(ledger::expire_due(pool, at(1) + Duration::days(rng.below(25))).await?),
        // Repeats of earlier commands must change nothing.
        5 => drop(
            ledger::consume(
                pool,
                org,
                1 + rng.below(200),
                &format!("r{}", rng.below(u64::try_from(i)? + 1)),
            )
            .await?,
        ),
        _ => drop(ledger::consume(pool, org, 1 + rng.below(200), &format!("r{i}")).await?),
    }
    Ok(())
}

#[tokio::test]
async fn rebuild_equals_the_live_projection_after_a_random_mix() -> anyhow::Result<()> {
    let pool = pool().await?;
    let org = org(&pool, "random").await;
    let mut rng = Rng(0x1eaf_70c5);
    ledger::grant(&pool, org, 100, "opening", None).await?;
    for i in 0..300 {
        random_step(&pool, org, &mut rng, i).await?;
    }
    let live = ledger::balance(&pool, org).await?;
    ledger::verify(&pool, org).await?;
    let rebuilt = ledger::rebuild(&pool, org).await?;
    assert_eq!(
        ledger::Balance {
            as_of: live.as_of,
            ..rebuilt
        },
        live
    );
    invariant(&pool, org).await;
    // A damaged projection is caught by verify and repaired by rebuild.
    sqlx::query("UPDATE ledger.balances SET consumed = consumed + 7, balance = balance - 7 WHERE org_id = $1")
        .bind(org)
        .execute(&pool)
        .await?;
    sqlx::query("UPDATE ledger.credit_blocks SET remaining = remaining + 1 WHERE org_id = $1")
        .bind(org)
        .execute(&pool)
        .await?;
    let drift = ledger::verify(&pool, org).await;
    match drift {
        Err(LedgerError::Drift(d)) => {
            assert_eq!(d.live.consumed, live.consumed + 7);
            assert!(!d.blocks.is_empty());
        }
        other => panic!("expected drift, got {other:?}"),
    }
    let repaired = ledger::rebuild(&pool, org).await?;
    assert_eq!(
        ledger::Balance {
            as_of: live.as_of,
            ..repaired
        },
        live
    );
    invariant(&pool, org).await;
    Ok(())
}

async fn api_with_clock(now: DateTime<Utc>) -> anyhow::Result<common::TestApp> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 8)?;
    db::migrate(&pool).await?;
    let state = ApiState::new(pool, AdminToken::new(common::TOKEN))
        .with_clock(Arc::new(ManualClock::new(now)));
    state.set_migrated();
    common::serve_state(url, state).await
}

async fn grant_call(
    app: &common::TestApp,
    org: &str,
    key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = app
        .req(reqwest::Method::POST, &format!("/v1/orgs/{org}/grants"))
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn api_balance_and_grants() -> anyhow::Result<()> {
    let app = api_with_clock(at(1)).await?;
    let org = app.org("acme").await?["id"].as_str().unwrap().to_owned();
    let zero: Value = app
        .get(&format!("/v1/orgs/{org}/balance"))
        .await?
        .json()
        .await?;
    assert_eq!(
        zero,
        json!({"org": org, "tokens": 0, "purchased": 0, "granted": 0, "consumed": 0, "refunded": 0,
               "expired": 0, "version": 0, "as_of": "2030-01-01T00:00:00Z"})
    );
    let audits = app.audit_count().await?;
    let body =
        json!({"tokens": 5000, "reason": "support credit", "expires_at": "2030-02-01T00:00:00Z"});
    let res = grant_call(&app, &org, Some("k-1"), body.clone()).await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await?;
    assert_eq!(
        (
            first["kind"].clone(),
            first["tokens"].clone(),
            first["version"].clone()
        ),
        (json!("granted"), json!(5000), json!(1))
    );
    assert_eq!(first["data"]["reason"], json!("support credit"));
    let res = grant_call(&app, &org, Some("k-1"), body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await?,
        first,
        "a repeated key returns the first grant"
    );
    assert_eq!(app.audit_count().await?, audits + 1, "audited once");
    let other = grant_call(&app, &org, Some("k-1"), json!({"tokens": 1, "reason": "x"})).await;
    common::problem(other, 409, "conflict").await?;
    let b: Value = app
        .get(&format!("/v1/orgs/{org}/balance"))
        .await?
        .json()
        .await?;
    assert_eq!(
        (
            b["tokens"].clone(),
            b["granted"].clone(),
            b["version"].clone()
        ),
        (json!(5000), json!(5000), json!(1))
    );
    // Bad input writes nothing and names the field.
    for (key, body, field) in [
        (None, json!({"tokens": 1, "reason": "r"}), "Idempotency-Key"),
        (Some("k-2"), json!({"tokens": 0, "reason": "r"}), "tokens"),
        (Some("k-3"), json!({"tokens": 1, "reason": " "}), "reason"),
        (
            Some("k-4"),
            json!({"tokens": 1, "reason": "r", "expires_at": "2029-12-31T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let p = common::problem(grant_call(&app, &org, key, body).await, 422, "validation").await?;
        assert_eq!(common::fields(&p), vec![field.to_owned()]);
    }
    assert_eq!(app.audit_count().await?, audits + 1);
    let unknown = Uuid::new_v4();
    for path in [
        format!("/v1/orgs/{unknown}/balance"),
        format!("/v1/orgs/{unknown}/ledger"),
    ] {
        common::problem(app.get(&path).await?, 404, "not-found").await?;
    }
    let res = grant_call(
        &app,
        &unknown.to_string(),
        Some("k-5"),
        json!({"tokens": 1, "reason": "r"}),
    )
    .await;
    common::problem(res, 404, "not-found").await?;
    invariant(&app.pool, org.parse()?).await;
    Ok(())
}

#[tokio::test]
async fn api_ledger_pages_newest_first() -> anyhow::Result<()> {
    let app = api_with_clock(at(1)).await?;
    let org = app.org("acme").await?["id"].as_str().unwrap().to_owned();
    let id: Uuid = org.parse()?;
    ledger::credit_purchase(&app.pool, id, 1000, "p1", None).await?;
    for i in 0..6 {
        ledger::consume(&app.pool, id, 10, &format!("req-{i}")).await?;
    }
    let mut seen = Vec::new();
    let mut path = format!("/v1/orgs/{org}/ledger?limit=3");
    loop {
        let page: Value = app.get(&path).await?.json().await?;
        for e in page["items"].as_array().unwrap() {
            seen.push(e["version"].as_i64().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/orgs/{org}/ledger?limit=3&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    let first: Value = app
        .get(&format!("/v1/orgs/{org}/ledger?limit=1"))
        .await?
        .json()
        .await?;
    let e = &first["items"][0];
    assert_eq!(
        (e["kind"].clone(), e["tokens"].clone(), e["ref"].clone()),
        (json!("consumed"), json!(10), json!("req-5"))
    );
    for bad in ["limit=0", "limit=101", "cursor=abc", "after=1"] {
        let res = app.get(&format!("/v1/orgs/{org}/ledger?{bad}")).await?;
        assert!(
            res.status() == 422 || res.status() == 400,
            "{bad}: {}",
            res.status()
        );
    }
    invariant(&app.pool, id).await;
    Ok(())
}

#[tokio::test]
async fn rebuild_command_reports_the_drift_it_fixed() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let (good, bad) = (org(&pool, "good").await, org(&pool, "bad").await);
    ledger::grant(&pool, good, 10, "g", None).await?;
    ledger::grant(&pool, bad, 10, "g", None).await?;
    sqlx::query("UPDATE ledger.balances SET granted = 99, balance = 99 WHERE org_id = $1")
        .bind(bad)
        .execute(&pool)
        .await?;
    let lines = ledger::rebuild_command(&url, None)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = |o: Uuid| {
        lines
            .iter()
            .find(|l| l.contains(&o.to_string()))
            .unwrap()
            .clone()
    };
    assert!(line(good).contains("consistent at version 1"), "{lines:?}");
    assert!(line(bad).contains("drift fixed"), "{lines:?}");
    assert_eq!(ledger::balance(&pool, bad).await?.granted, 10);
    let again = ledger::rebuild_command(&url, Some(&bad.to_string()))
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(again.len(), 1);
    assert!(again[0].contains("consistent"), "{again:?}");
    assert!(ledger::rebuild_command(&url, Some("nope")).await.is_err());
    invariant(&pool, bad).await;
    Ok(())
}
