//! Memory of the in-process limiter with many active keys, and after idle eviction.
//!
//! Run: `cargo run --release -p leaky-limit --example limit_memory [KEYS]` (default 100,000).
//! Every key gets the buckets a free-tier request charges in the quickstart config (requests/min,
//! tokens/min, tokens/day), keyed as the gateway keys them. Prints the process's RSS (from
//! /proc/self/status) before, with every key active, and after the buckets went idle and were evicted.
// An example's output is its report.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use leaky_limit::{Algorithm, CalendarWindow, Charge, MemoryStore, OnStoreError, Taken};
use std::sync::Arc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    const MIN: u64 = 60_000_000_000;
    let policies: [(&str, Arc<Algorithm>); 3] = [
        (
            "free-rpm:1a2b3c4d:k=",
            Arc::new(Algorithm::Leaky {
                rate: 20,
                period_ns: MIN,
                burst: 20,
                shape_max_wait_ns: None,
            }),
        ),
        (
            "free-tpm:5e6f7a8b:k=",
            Arc::new(Algorithm::Leaky {
                rate: 10_000,
                period_ns: MIN,
                burst: 10_000,
                shape_max_wait_ns: None,
            }),
        ),
        (
            "free-tpd:9c0d1e2f:k=",
            Arc::new(Algorithm::Window {
                limit: 100_000,
                window: CalendarWindow::Day,
                tz: chrono_tz::UTC,
                soft: false,
            }),
        ),
    ];
    let store = MemoryStore::new();
    let now = 1_800_000_000_000_000_000u64;
    let before = rss_kib();
    for k in 0..keys {
        let charges: Vec<Charge> = policies
            .iter()
            .enumerate()
            .map(|(i, (prefix, algo))| Charge {
                key: Arc::from(format!("{prefix}key-{k:08}")),
                algo: algo.clone(),
                cost: if i == 0 { 1 } else { 500 },
                reserve: 0,
                on_error: OnStoreError::Local,
            })
            .collect();
        if !matches!(store.take_sync(now, &charges), Taken::Admitted(_)) {
            eprintln!("key {k} refused");
            std::process::exit(1);
        }
    }
    let active = rss_kib();
    // A day later every bucket is full again and the daily window has rolled: all idle.
    let evicted = store.evict_idle(now + 86_400_000_000_000 * 2);
    let after = rss_kib();
    println!("keys: {keys} ({} buckets)", keys * policies.len());
    println!("RSS before: {} MiB", before / 1024);
    println!(
        "RSS with every key active: {} MiB (+{} MiB, {} bytes per key)",
        active / 1024,
        (active - before) / 1024,
        (active - before) * 1024 / keys as u64
    );
    println!(
        "evicted {evicted} idle buckets; {} left; RSS after: {} MiB",
        store.len(),
        after / 1024
    );
}
