//! The revoked-token feed the watch streams push to proxies, on a real `redis-server`: two
//! control-plane replicas share Redis; what one revokes (one token, or a family in one call) reaches the
//! other's feed within a second, as a complete set with a growing revision; expired entries leave it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use leaky_control_plane::identity::revoked::{Revocations, RevokedFeed, RETAIN_AFTER_EXP_SECS};
use leaky_limit::redis_server::RedisServer;

/// Waits (at most `within`) for the feed to hold a set satisfying `ok`; returns that set's jtis and
/// revision.
async fn until(
    feed: &mut RevokedFeed,
    within: Duration,
    ok: impl Fn(&[String]) -> bool,
) -> (Vec<String>, i64) {
    let deadline = Instant::now() + within;
    loop {
        let seen = feed.borrow_and_update().as_ref().map(|s| {
            let jtis: Vec<String> = s.tokens.iter().map(|(j, _)| j.clone()).collect();
            (jtis, s.revision)
        });
        if let Some((jtis, rev)) = seen {
            if ok(&jtis) {
                return (jtis, rev);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, feed.changed()).await.is_ok(),
            "the feed did not change in time (last: {:?})",
            feed.borrow().as_ref().map(|s| s.tokens.clone())
        );
    }
}

#[tokio::test]
async fn a_revocation_on_one_replica_reaches_the_others_feed_within_a_second() {
    let redis = RedisServer::spawn().expect("redis-server");
    let a = Revocations::new(&redis.url()).unwrap();
    let b = Revocations::new(&redis.url()).unwrap();
    let mut feed = b.subscribe();
    let (empty, r0) = until(&mut feed, Duration::from_secs(2), |_| true).await;
    assert!(empty.is_empty());

    let t = Instant::now();
    a.revoke("tok-1", 600).await.unwrap();
    let (set, r1) = until(&mut feed, Duration::from_secs(1), |s| s.len() == 1).await;
    assert_eq!(set, ["tok-1"]);
    assert!(r1 > r0);
    println!("replica A revoke -> replica B feed: {:?}", t.elapsed());
    let exp = feed.borrow().as_ref().unwrap().tokens[0].1;
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 598..=now + 601).contains(&exp),
        "exp {exp} vs now {now}"
    );
    assert!(b.is_revoked("tok-1").await.unwrap());

    // A family in one call: one revision step, every member.
    a.revoke_many(&[("fam-1", 600), ("fam-2", 600), ("short", 1)])
        .await
        .unwrap();
    let (mut set, r2) = until(&mut feed, Duration::from_secs(1), |s| s.len() == 4).await;
    set.sort();
    assert_eq!(set, ["fam-1", "fam-2", "short", "tok-1"]);
    assert_eq!(r2, r1 + 1);

    // An entry stays in the pushed set past its `exp` (a proxy's leeway could still pass the token)
    // though the per-token key is gone; one retained too long leaves it at the next read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.is_revoked("short").await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "the per-token key outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let long_ago = chrono::Utc::now().timestamp() - RETAIN_AFTER_EXP_SECS - 1;
    redis::cmd("ZADD")
        .arg("leaky:identity:revocations")
        .arg(long_ago)
        .arg("ancient")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    a.revoke("filler", 600).await.unwrap();
    let (set, _) = until(&mut feed, Duration::from_secs(1), |s| {
        s.iter().any(|j| j == "filler")
    })
    .await;
    assert!(set.iter().any(|j| j == "short"), "{set:?}");
    assert!(!set.iter().any(|j| j == "ancient"), "{set:?}");
    assert!(b.is_revoked("fam-2").await.unwrap());
}
