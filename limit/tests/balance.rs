//! Prepaid balances (`unit: balance`) through the engine: the policy compiled from YAML, its charges
//! against the in-process store (admit until the estimate no longer fits, settle up and down, refuse
//! with nothing consumed, credit raised by a new config version without touching `debited`), and the
//! same account in a real Redis through `RedisStore` and the control plane's mirror API
//! (`leaky_limit::balance`).
//!
//! Redis: `LEAKY_TEST_REDIS_URL` when set (each test uses its own org names), else a throwaway
//! `redis-server` per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_config::{Dimension, OnStoreErrorSpec};
use leaky_limit::balance::{self, BalanceState};
use leaky_limit::redis_server::RedisServer;
use leaky_limit::{
    Adjust, Algorithm, Limiter, MemoryStore, RedisOptions, RedisStore, State, Store, Subject,
    Taken, TokenCost,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const BASE: &str = "providers:
  openai: { base_url: http://127.0.0.1:1 }
routes:
  - { name: v1, prefix: /v1, upstream: { provider: openai } }
limits:
  policies:
    - { name: prepaid, unit: balance }
    - { name: rpm, rate: 3, per: minute, scope: [key], match: { models: [gpt-4o-mini] } }
";

fn limiter(balances: &str, store: Arc<dyn Store>) -> Limiter {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, format!("{BASE}{balances}")).unwrap();
    let c = leaky_config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    Limiter::new(&c.limits, &c.tiers, store, None, Arc::new(|| 0)).unwrap()
}

fn subject<'a>(org: Option<&'a str>, model: &'static str, completion: u64) -> Subject<'a> {
    Subject {
        key: Some("key-a"),
        org,
        model: Some(model),
        route: Some("v1"),
        cost: Some(TokenCost {
            prompt: 10,
            max_completion: Some(completion),
            choices: 1,
        }),
        ..Subject::default()
    }
}

/// Reserves `s`'s charges: `Some(charges)` when admitted.
async fn take(l: &Limiter, s: &Subject<'_>) -> Option<Vec<leaky_limit::Charge>> {
    let c = l.charges(s);
    match l.store.take(0, &c.charges).await.unwrap() {
        Taken::Admitted(_) => Some(c.charges),
        Taken::Denied { .. } => None,
    }
}

/// Settles the balance charge to `used` tokens.
async fn settle(l: &Limiter, charges: &[leaky_limit::Charge], used: u64) {
    let c = &charges[0];
    let adjust = Adjust {
        key: c.key.clone(),
        algo: c.algo.clone(),
        delta: used as i64 - c.cost as i64,
    };
    l.store.adjust(0, &[adjust]).await.unwrap();
}

fn debited(m: &MemoryStore, org: &str) -> u64 {
    match m.state(&balance::key(org)) {
        Some(State::Balance { debited }) => debited,
        None => 0,
        Some(s) => panic!("{s:?}"),
    }
}

#[test]
fn a_balance_policy_is_per_org_and_fails_closed_by_default() {
    let l = limiter("balances: { acme: 1000 }\n", Arc::new(MemoryStore::new()));
    let p = &l.policies[0].policy;
    assert_eq!(p.scope, vec![Dimension::Org]);
    assert_eq!(p.on_store_error, OnStoreErrorSpec::FailClosed);
    let c = l.charges(&subject(Some("acme"), "gpt-4o", 90));
    assert_eq!(&*c.charges[0].key, "leaky:bal:{acme}");
    assert_eq!(c.charges[0].cost, 100);
    assert_eq!(*c.charges[0].algo, Algorithm::Balance { credited: 1000 });
    // Never "too large": a credit may come at any time.
    assert_eq!(
        l.never_fits(&subject(Some("acme"), "gpt-4o", 1_000_000)),
        None
    );
}

#[tokio::test]
async fn memory_admits_until_the_estimate_no_longer_fits_and_settles_exactly() {
    let m = Arc::new(MemoryStore::new());
    let l = limiter("balances: { acme: 1000 }\n", m.clone());
    let s = subject(Some("acme"), "gpt-4o", 290); // reserves 300
    let a = take(&l, &s).await.unwrap();
    assert_eq!(debited(&m, "acme"), 300);
    settle(&l, &a, 120).await; // down: 180 given back
    assert_eq!(debited(&m, "acme"), 120);
    let b = take(&l, &s).await.unwrap();
    settle(&l, &b, 350).await; // up: the answer used more than reserved
    assert_eq!(debited(&m, "acme"), 470);
    let c = take(&l, &s).await.unwrap();
    assert_eq!(debited(&m, "acme"), 770);
    // 770 + 300 > 1000: refused, nothing taken.
    assert!(take(&l, &s).await.is_none());
    assert_eq!(debited(&m, "acme"), 770);
    // A cut request gives back what it did not use.
    settle(&l, &c, 0).await;
    assert_eq!(debited(&m, "acme"), 470);
    // Another org's account is separate; an org with no credit, or no org, is refused.
    assert!(take(&l, &subject(Some("umbrella"), "gpt-4o", 0))
        .await
        .is_none());
    assert!(take(&l, &subject(None, "gpt-4o", 0)).await.is_none());
    assert_eq!(debited(&m, "acme"), 470);
}

#[tokio::test]
async fn a_refusal_consumes_nothing_from_the_other_buckets() {
    let m = Arc::new(MemoryStore::new());
    let l = limiter("balances: { acme: 250 }\n", m.clone());
    let s = subject(Some("acme"), "gpt-4o-mini", 90); // balance 100 + rpm 1
    assert!(take(&l, &s).await.is_some());
    assert!(take(&l, &s).await.is_some());
    assert!(take(&l, &s).await.is_none()); // 300 > 250
    assert_eq!(debited(&m, "acme"), 200);
    // The rpm bucket still has its third request: the refused one took nothing from it.
    let rpm = &l.charges(&s).charges[1].key;
    assert_eq!(m.status(rpm, 0).unwrap().remaining, 1);
}

#[tokio::test]
async fn a_new_config_version_raises_credited_and_keeps_debited() {
    let m = Arc::new(MemoryStore::new());
    let v1 = limiter("balances: { acme: 300 }\n", m.clone());
    let s = subject(Some("acme"), "gpt-4o", 190); // reserves 200
    let in_flight = take(&v1, &s).await.unwrap();
    assert!(take(&v1, &s).await.is_none());
    // The control plane (or the operator) credits more: a new version, the same store.
    let v2 = limiter("balances: { acme: 1000 }\n", m.clone());
    assert_eq!(debited(&m, "acme"), 200);
    assert!(take(&v2, &s).await.is_some());
    assert_eq!(debited(&m, "acme"), 400);
    // The request admitted under v1 settles against the same account.
    settle(&v1, &in_flight, 50).await;
    assert_eq!(debited(&m, "acme"), 250);
}

// ---- Redis ----

static ORG: AtomicU64 = AtomicU64::new(0);

fn unique_org(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        ORG.fetch_add(1, Ordering::Relaxed)
    )
}

async fn redis() -> (
    RedisStore,
    redis::aio::MultiplexedConnection,
    Option<RedisServer>,
) {
    let (url, server) = match std::env::var("LEAKY_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let s = RedisServer::spawn().unwrap_or_else(|e| panic!("redis-server: {e}"));
            (s.url(), Some(s))
        }
    };
    let opts = RedisOptions {
        key_prefix: unique_org("t"),
        ..RedisOptions::default()
    };
    let store = RedisStore::connect(&url, opts).await.unwrap();
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (store, conn, server)
}

#[tokio::test]
async fn set_credited_is_absolute_and_ordered_by_version() {
    let (_store, mut conn, _server) = redis().await;
    let org = unique_org("acme");
    assert_eq!(balance::read(&mut conn, &org).await.unwrap(), None);
    assert!(balance::set_credited(&mut conn, &org, 1000, 2)
        .await
        .unwrap());
    // A retry of the same write, and an older one arriving late, change nothing.
    assert!(!balance::set_credited(&mut conn, &org, 1000, 2)
        .await
        .unwrap());
    assert!(!balance::set_credited(&mut conn, &org, 500, 1)
        .await
        .unwrap());
    let st = balance::read(&mut conn, &org).await.unwrap().unwrap();
    assert_eq!(
        st,
        BalanceState {
            credited: 1000,
            credited_version: 2,
            debited: 0
        }
    );
    assert!(balance::set_credited(&mut conn, &org, 700, 3)
        .await
        .unwrap());
    let st = balance::read(&mut conn, &org).await.unwrap().unwrap();
    assert_eq!((st.credited, st.credited_version), (700, 3));
}

#[tokio::test]
async fn redis_reserves_settles_and_raises_without_a_reload() {
    let (store, mut conn, _server) = redis().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let l = limiter("", store.clone());
    let org = unique_org("acme");
    let s = subject(Some(&org), "gpt-4o-mini", 290); // balance 300 + rpm 1
                                                     // Nothing credited yet: refused, nothing written.
    assert!(take(&l, &s).await.is_none());
    assert_eq!(balance::read(&mut conn, &org).await.unwrap(), None);
    balance::set_credited(&mut conn, &org, 500, 1)
        .await
        .unwrap();
    let a = take(&l, &s).await.unwrap();
    assert_eq!(debited_in(&mut conn, &org).await, 300);
    assert!(take(&l, &s).await.is_none()); // 600 > 500; the rpm bucket keeps its 2 requests
    settle(&l, &a, 123).await;
    assert_eq!(debited_in(&mut conn, &org).await, 123);
    // The control plane raises the credit: the very next request fits, no reload.
    balance::set_credited(&mut conn, &org, 5000, 2)
        .await
        .unwrap();
    assert!(take(&l, &s).await.is_some());
    assert!(take(&l, &s).await.is_some());
    // The rpm bucket (3/min) was charged exactly three times: the refusals took nothing.
    assert!(take(&l, &s).await.is_none());
    assert_eq!(debited_in(&mut conn, &org).await, 723);
}

async fn debited_in(conn: &mut redis::aio::MultiplexedConnection, org: &str) -> i64 {
    balance::read(conn, org).await.unwrap().unwrap().debited
}

#[tokio::test]
async fn correct_debited_is_a_compare_and_set() {
    let (_store, mut conn, _server) = redis().await;
    let org = unique_org("acme");
    // Absent counts as 0.
    assert!(balance::correct_debited(&mut conn, &org, 0, 40)
        .await
        .unwrap());
    assert!(!balance::correct_debited(&mut conn, &org, 0, 10)
        .await
        .unwrap());
    assert!(balance::correct_debited(&mut conn, &org, 40, 10)
        .await
        .unwrap());
    let st = balance::read(&mut conn, &org).await.unwrap().unwrap();
    assert_eq!((st.debited, st.credited, st.spendable()), (10, 0, -10));
}
