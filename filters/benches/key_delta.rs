//! Key-delta apply with 100k keys loaded: what a control plane's `keys` event costs the proxy. One
//! upsert and one removal build the next index from the live one (`KeyIndex::with_delta`, which
//! copies the maps) and publish it (`SharedKeyIndex::publish`, one pointer store). Baseline: the full
//! rebuild a snapshot would do (`KeyIndex::new` over the 100k keys).
//!
//! Run: `cargo bench -p leaky-filters --bench key_delta -- --quick`
#![allow(clippy::unwrap_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use leaky_config::ApiKey;
use leaky_filters::{KeyIndex, SharedKeyIndex};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const KEYS: usize = 100_000;

fn key(i: usize) -> ApiKey {
    ApiKey {
        id: format!("key-{i}"),
        sha256: Sha256::digest(format!("lt-secret-{i}").as_bytes()).into(),
        user: format!("user-{}", i % 1000),
        org: Some(format!("org-{}", i % 100)),
        tier: "pro".into(),
        roles: vec![],
        models: vec![],
        expires_at: None,
    }
}

fn bench(c: &mut Criterion) {
    let keys: Vec<ApiKey> = (0..KEYS).map(key).collect();
    let shared = SharedKeyIndex::new(Arc::new(KeyIndex::new(&keys)));
    let added = [key(KEYS)];
    let removed = ["key-42".to_string()];
    c.bench_function(
        "key-delta apply (1 upsert + 1 remove, 100k keys) + publish",
        |b| {
            b.iter(|| {
                let next = shared.load().with_delta(&added, &removed).unwrap();
                shared.publish(Arc::new(next));
            })
        },
    );
    c.bench_function("baseline: full KeyIndex rebuild (100k keys)", |b| {
        b.iter(|| black_box(KeyIndex::new(&keys)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
