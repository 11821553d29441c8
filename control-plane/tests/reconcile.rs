//! The balance reconciler on a real PostgreSQL and a real `redis-server`: a flushed Redis is rebuilt
//! from the ledger; each drift kind (credited behind, debited below consumed, debited above consumed
//! and standing still) is corrected exactly once; a moving `debited` is left alone; two reconcilers at
//! once correct once, and a pass skips while another replica holds the lock. Passes are driven
//! explicitly (the timer only calls `pass`), so nothing waits on wall time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::Arc;

use leaky_control_plane::billing::adapters::{org_key, RedisMirror};
use leaky_control_plane::billing::reconcile::{Correction, ReconcileStats, Reconciler, LOCK_KEY};
use leaky_control_plane::{db, ledger, tenancy};
use leaky_limit::balance::{self, BalanceState};
use leaky_limit::redis_server::RedisServer;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use uuid::Uuid;

struct Env {
    pool: PgPool,
    _redis: RedisServer,
    url: String,
    conn: MultiplexedConnection,
    org: Uuid,
}

/// A migrated database with one org holding 1000 granted tokens, 300 of them consumed; a Redis.
async fn env() -> Env {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    let org = tenancy::orgs::create(&pool, "test", "acme")
        .await
        .unwrap()
        .id;
    ledger::grant(&pool, org, 1000, "g-1", None).await.unwrap();
    ledger::consume(&pool, org, 300, "r-1").await.unwrap();
    let redis = RedisServer::spawn().expect("redis-server");
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    Env {
        pool,
        url: redis.url(),
        _redis: redis,
        conn,
        org,
    }
}

impl Env {
    fn reconciler(&self) -> (Reconciler, Arc<ReconcileStats>) {
        let stats = Arc::new(ReconcileStats::default());
        let mirror = Arc::new(RedisMirror::new(&self.url).unwrap());
        (
            Reconciler::new(self.pool.clone(), mirror, stats.clone()),
            stats,
        )
    }

    async fn state(&mut self) -> Option<BalanceState> {
        balance::read(&mut self.conn, &org_key(self.org))
            .await
            .unwrap()
    }

    async fn hset(&mut self, field: &str, value: i64) {
        let _: () = redis::cmd("HSET")
            .arg(balance::key(&org_key(self.org)))
            .arg(field)
            .arg(value)
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }

    /// Redis agrees with the ledger: credited total at its version, debited = consumed.
    async fn assert_mirrors_ledger(&mut self) {
        let (credited, version) = ledger::credited_total(&self.pool, self.org).await.unwrap();
        let b = ledger::balance(&self.pool, self.org).await.unwrap();
        assert!(b.holds(), "{b:?}");
        let st = self.state().await.unwrap();
        assert_eq!(
            (st.credited, st.credited_version, st.debited),
            (credited, version, b.consumed)
        );
    }
}

fn kinds(corrections: &[Correction]) -> Vec<&'static str> {
    corrections.iter().map(|c| c.kind).collect()
}

#[tokio::test]
async fn a_flushed_redis_is_rebuilt_from_the_ledger() {
    let mut env = env().await;
    let (r, stats) = env.reconciler();
    let first = r.pass().await.unwrap();
    assert!(first.ran);
    assert_eq!(kinds(&first.corrections), ["credited", "debited_raised"]);
    env.assert_mirrors_ledger().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut env.conn)
        .await
        .unwrap();
    assert_eq!(env.state().await, None);
    let rebuilt = r.pass().await.unwrap();
    assert_eq!(
        rebuilt.corrections,
        [
            Correction {
                org: env.org,
                kind: "credited",
                before: 0,
                after: 1000
            },
            Correction {
                org: env.org,
                kind: "debited_raised",
                before: 0,
                after: 300
            },
        ]
    );
    env.assert_mirrors_ledger().await;
    assert!(r.pass().await.unwrap().corrections.is_empty());
    let counted = stats.corrections();
    assert_eq!(
        counted,
        [
            ("credited", 2),
            ("debited_raised", 2),
            ("debited_lowered", 0)
        ]
    );
    assert_eq!(stats.passes(), 3);
}

#[tokio::test]
async fn each_drift_kind_is_corrected_exactly_once() {
    let mut env = env().await;
    let (r, stats) = env.reconciler();
    r.pass().await.unwrap();
    env.assert_mirrors_ledger().await;
    // credited behind: a new grant the mirror never heard of.
    ledger::grant(&env.pool, env.org, 500, "g-2", None)
        .await
        .unwrap();
    let pass = r.pass().await.unwrap();
    assert_eq!(kinds(&pass.corrections), ["credited"]);
    assert_eq!(
        (pass.corrections[0].before, pass.corrections[0].after),
        (1000, 1500)
    );
    // debited below consumed: Redis lost debits.
    env.hset("debited", 100).await;
    let pass = r.pass().await.unwrap();
    assert_eq!(kinds(&pass.corrections), ["debited_raised"]);
    assert_eq!(
        (pass.corrections[0].before, pass.corrections[0].after),
        (100, 300)
    );
    // debited above consumed, standing still: lowered on the second pass that sees it, not the first.
    env.hset("debited", 350).await;
    assert!(r.pass().await.unwrap().corrections.is_empty());
    assert_eq!(env.state().await.unwrap().debited, 350);
    let pass = r.pass().await.unwrap();
    assert_eq!(kinds(&pass.corrections), ["debited_lowered"]);
    assert_eq!(
        (pass.corrections[0].before, pass.corrections[0].after),
        (350, 300)
    );
    for _ in 0..3 {
        assert!(r.pass().await.unwrap().corrections.is_empty());
    }
    env.assert_mirrors_ledger().await;
    let counted = stats.corrections();
    assert_eq!(
        counted,
        [
            ("credited", 2),
            ("debited_raised", 2),
            ("debited_lowered", 1)
        ]
    );
}

#[tokio::test]
async fn a_moving_debited_is_left_alone() {
    let mut env = env().await;
    let (r, _) = env.reconciler();
    r.pass().await.unwrap();
    // In-flight reservations: debited above consumed and moving between passes.
    for debited in [400, 420, 410, 480] {
        env.hset("debited", debited).await;
        let pass = r.pass().await.unwrap();
        assert!(pass.corrections.is_empty(), "{pass:?}");
        assert_eq!(env.state().await.unwrap().debited, debited);
    }
    // The ledger moving (usage events arriving) counts as moving too.
    ledger::consume(&env.pool, env.org, 50, "r-2")
        .await
        .unwrap();
    let pass = r.pass().await.unwrap();
    assert!(
        !kinds(&pass.corrections).contains(&"debited_lowered"),
        "{pass:?}"
    );
    assert_eq!(env.state().await.unwrap().debited, 480);
    // Standing still since the previous pass: lowered to consumed (350).
    let pass = r.pass().await.unwrap();
    assert_eq!(kinds(&pass.corrections), ["debited_lowered"]);
    env.assert_mirrors_ledger().await;
}

#[tokio::test]
async fn two_reconcilers_at_once_correct_once_and_a_held_lock_skips_a_pass() {
    let mut env = env().await;
    let (a, stats_a) = env.reconciler();
    let (b, stats_b) = env.reconciler();
    for _ in 0..5 {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut env.conn)
            .await
            .unwrap();
        let (pa, pb) = tokio::join!(a.pass(), b.pass());
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert!(pa.ran || pb.ran);
        let mut all = kinds(&pa.corrections);
        all.extend(kinds(&pb.corrections));
        all.sort_unstable();
        assert_eq!(all, ["credited", "debited_raised"], "{pa:?} {pb:?}");
        env.assert_mirrors_ledger().await;
    }
    let total = |s: &ReconcileStats| s.corrections().iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(total(&stats_a) + total(&stats_b), 10);
    // Another replica mid-pass (its lock held here): this pass skips and touches nothing.
    let mut other = env.pool.begin().await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut env.conn)
        .await
        .unwrap();
    let skipped = a.pass().await.unwrap();
    assert!(!skipped.ran && skipped.corrections.is_empty());
    assert_eq!(env.state().await, None);
    other.rollback().await.unwrap();
    assert!(a.pass().await.unwrap().ran);
    env.assert_mirrors_ledger().await;
}
