//! Revocation honoured by the proxies: the real control plane (identity on Redis) and real proxies fed
//! by its watch stream. A token revoked through `/oauth2/revoke` is refused by every proxy within a
//! second, with no per-request call to anything (the set is pushed as a `revoked` event); another token
//! of the same client keeps working; a proxy that connects later receives the current set at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;
mod identity_stack;
#[path = "../control-plane/tests/common/mod.rs"]
mod pg;

use std::time::{Duration, Instant};

use common::eventually;
use identity_stack::{call, Stack};

#[tokio::test]
async fn a_revoked_token_is_refused_by_every_proxy_within_a_second() {
    let stack = Stack::start(&[]).await;
    let (a, b) = tokio::join!(stack.proxy("proxy-a", &[]), stack.proxy("proxy-b", &[]));
    let (id, secret) = stack.client("gateway-app").await;
    let revoked = stack.token(&id, &secret).await;
    let kept = stack.token(&id, &secret).await;
    for gw in [&a, &b] {
        assert_eq!(call(gw, &revoked).await, 200, "{}", gw.log());
        assert_eq!(call(gw, &kept).await, 200);
    }

    let started = Instant::now();
    stack.revoke(&id, &secret, &revoked).await;
    for gw in [&a, &b] {
        eventually(
            "the revoked token is refused",
            Duration::from_secs(1),
            Some(gw),
            || async { call(gw, &revoked).await == 401 },
        )
        .await;
    }
    println!(
        "revocation reached 2 proxies in {:?} (revoke call to the last refusal)",
        started.elapsed()
    );
    for gw in [&a, &b] {
        assert_eq!(call(gw, &kept).await, 200, "the client's other token");
        let log = gw.log();
        assert!(log.contains("revoked tokens updated"), "{log}");
    }

    // A proxy connecting now gets the complete set right after its first snapshot.
    let c = stack.proxy("proxy-c", &[]).await;
    eventually(
        "the late proxy refuses the revoked token",
        Duration::from_secs(1),
        Some(&c),
        || async { call(&c, &revoked).await == 401 },
    )
    .await;
    assert_eq!(call(&c, &kept).await, 200);
}
