//! Two members recomputing the same bucket at once (a rebalance hand-over): the staler result,
//! written last, must not win. On a real Cassandra: rollup rows carry the newest write time of the
//! rows they were computed from, and Cassandra keeps the cell with the highest timestamp.

use crate::common::cassandra;
use leaky_analytics::buckets::{Level, Totals, MINUTE_MS};
use leaky_analytics::event::UsageRow;
use leaky_analytics::store::{Dim, StoreConfig};

fn row(id: &str, ts: i64, prompt: i64) -> UsageRow {
    UsageRow {
        event_id: id.into(),
        ts,
        org: "race-org".into(),
        request_id: id.into(),
        key_id: "k".into(),
        model: "gpt-4o".into(),
        provider: "openai".into(),
        status: 200,
        totals: Totals {
            requests: 1,
            prompt_tokens: prompt,
            total_tokens: prompt,
            ..Totals::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_recompute_written_last_does_not_win() -> anyhow::Result<()> {
    let node = cassandra::node()?;
    let cfg = StoreConfig::new(&node, &cassandra::keyspace("race"));
    let store = leaky_analytics::connect_store(&cfg).await?;
    let minute = (chrono::Utc::now().timestamp_millis() / MINUTE_MS - 5) * MINUTE_MS;

    // Member A inserts e1 and reads the minute; member B inserts e2 and reads it after.
    store.insert_event(&row("e1", minute + 1_000, 10)).await?;
    let stale = store.sum_bucket("race-org", Level::Minute, minute).await?;
    store.insert_event(&row("e2", minute + 2_000, 32)).await?;
    let fresh = store.sum_bucket("race-org", Level::Minute, minute).await?;
    assert!(
        fresh.written > stale.written,
        "{} vs {}",
        fresh.written,
        stale.written
    );

    // B writes first, A's stale result arrives last.
    store
        .write_bucket("race-org", Level::Minute, minute, &fresh)
        .await?;
    store
        .write_bucket("race-org", Level::Minute, minute, &stale)
        .await?;

    let rows = store
        .read(
            "race-org",
            Level::Minute,
            Dim::All,
            minute,
            minute + MINUTE_MS,
        )
        .await?;
    let totals: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.totals.requests, r.totals.prompt_tokens))
        .collect();
    assert_eq!(totals, vec![(2, 42)]);

    // The hour built from it carries the same order one level up.
    store
        .recompute("race-org", Level::Hour, Level::Hour.floor(minute))
        .await?;
    let hour = store
        .read(
            "race-org",
            Level::Hour,
            Dim::Model,
            Level::Hour.floor(minute),
            Level::Hour.floor(minute) + 3_600_000,
        )
        .await?;
    assert_eq!(hour.iter().map(|r| r.totals.prompt_tokens).sum::<i64>(), 42);
    Ok(())
}
