//! Versioned CQL migrations on a real Cassandra: concurrent starters apply each version once, and a
//! second start changes nothing.

use crate::common::cassandra;
use leaky_analytics::schema::{applied_versions, migrate, MIGRATIONS};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn session(node: &str) -> anyhow::Result<Session> {
    Ok(SessionBuilder::new().known_node(node).build().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starters_apply_each_migration_once() -> anyhow::Result<()> {
    let node = cassandra::node()?;
    let ks = cassandra::keyspace("migrate");
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(&node).await?);
    }
    let runs = sessions.iter().enumerate().map(|(i, s)| {
        migrate(
            s,
            &ks,
            1,
            Box::leak(format!("starter-{i}").into_boxed_str()),
        )
    });
    let applied: Vec<Vec<i32>> = futures::future::try_join_all(runs).await?;
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let mut by_all: Vec<i32> = applied.iter().flatten().copied().collect();
    by_all.sort_unstable();
    assert_eq!(
        by_all, all,
        "each version applied by exactly one starter: {applied:?}"
    );
    assert_eq!(applied_versions(&sessions[0], &ks).await?, all);

    // A later start finds everything applied and the tables in place.
    assert_eq!(
        migrate(&sessions[1], &ks, 1, "later").await?,
        Vec::<i32>::new()
    );
    for table in ["events", "rollup_minute", "rollup_hour", "rollup_day"] {
        sessions[0]
            .query_unpaged(format!("SELECT * FROM {ks}.{table} LIMIT 1"), ())
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_keyspace_name_is_refused_before_any_cql() -> anyhow::Result<()> {
    let node = cassandra::node()?;
    let s = session(&node).await?;
    let err = migrate(&s, "bad-name; DROP", 1, "x").await;
    assert!(
        matches!(err, Err(leaky_analytics::store::StoreError::Config(_))),
        "{err:?}"
    );
    Ok(())
}
