#![allow(clippy::unwrap_used)]

use super::*;
use leaky_wire::{UsageRecord, UsageSource};
use std::time::Duration;

fn record() -> UsageRecord {
    UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: "req".into(),
        principal: "k".into(),
        user: "u".into(),
        org: None,
        tier: "pro".into(),
        route: None,
        model: "m".into(),
        provider: "p".into(),
        prompt_tokens: 1,
        completion_tokens: 2,
        source: UsageSource::Reported,
        status: 200,
        latency_ms: 1.0,
        cached: false,
        charged_tokens: None,
        traceparent: None,
    }
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn drain_service() -> (
    UsageSink,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let sink = UsageSink::new(16);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let drain = UsageDrain { sink: sink.clone() };
    let task = tokio::spawn(async move { drain.start(rx).await });
    (sink, tx, task)
}

#[tokio::test(start_paused = true)]
async fn drains_every_tick() {
    let (sink, _tx, task) = drain_service();
    settle().await; // the interval's first tick is immediate
    sink.record(record());
    settle().await;
    assert_eq!(sink.len(), 1, "nothing drains between ticks");
    tokio::time::advance(DRAIN_EVERY).await;
    settle().await;
    assert!(sink.is_empty());
    task.abort();
}

/// Issue #12: records queued when the shutdown signal arrives are written at once, not a tick later
/// (the process may be gone by then).
#[tokio::test(start_paused = true)]
async fn flushes_at_the_shutdown_signal() {
    let (sink, tx, task) = drain_service();
    settle().await;
    sink.record(record());
    sink.record(record());
    tx.send(true).unwrap();
    settle().await;
    assert!(sink.is_empty(), "flushed without the clock moving");
    task.abort();
}

/// Requests finishing in the grace period still queue records: they drain on later ticks, and a
/// dropped shutdown sender does not turn the loop into a busy one.
#[tokio::test(start_paused = true)]
async fn keeps_draining_after_the_signal() {
    let (sink, tx, task) = drain_service();
    settle().await;
    tx.send(true).unwrap();
    drop(tx);
    settle().await;
    sink.record(record());
    tokio::time::advance(DRAIN_EVERY).await;
    settle().await;
    assert!(sink.is_empty());
    assert!(!task.is_finished());
    task.abort();
}

/// The last flush after the server stopped; spawning afterwards is harmless.
#[test]
fn shutdown_flushes_and_stops_the_runtime() {
    let bg = Background::start().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    bg.spawn(async move {
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    bg.usage().record(record());
    bg.usage().record(record());
    bg.shutdown();
    assert!(bg.usage().is_empty());
    bg.spawn(async {});
}
