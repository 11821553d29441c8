//! Store micro-benchmarks: a memory-store hit, and the Redis value codec on a 4 KiB JSON body.
//! Figures and the command: `loadtests/results/cache.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use leaky_cache::{CachedUsage, Entry, Key, Lookup, MemoryStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// A chat completion of about 4 KiB, as an upstream sends it.
fn body_4k() -> Bytes {
    let mut s = String::from(
        r#"{"id":"chatcmpl-9","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":""#,
    );
    let words = [
        "gateway", "token", "limit", "cache", "stream", "usage", "model", "tenant",
    ];
    let mut i = 0usize;
    while s.len() < 4000 {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.push_str(
        r#""},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":800}}"#,
    );
    Bytes::from(s)
}

fn entry() -> Entry {
    Entry {
        status: 200,
        content_type: "application/json".into(),
        body: body_4k(),
        stored_at_ms: 1_715_943_598_000,
        provider: "openai".into(),
        served_model: Some("gpt-4o-mini".into()),
        usage: Some(CachedUsage {
            prompt: 120,
            completion: 800,
        }),
    }
}

fn memory_get_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = MemoryStore::new(64 << 20);
    let key = Key([7; 32]);
    // Other entries so the lookup is not into a one-entry table.
    runtime.block_on(async {
        for n in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&n.to_le_bytes());
            store
                .put(&Key(k), Arc::new(entry()), Duration::from_secs(600))
                .await;
        }
        store
            .put(&key, Arc::new(entry()), Duration::from_secs(600))
            .await;
    });
    c.bench_function("memory_get_hit", |b| {
        b.iter(|| {
            let found = runtime.block_on(store.get(black_box(&key)));
            assert!(matches!(found, Lookup::Hit(_)));
        })
    });
}

fn codec_4k(c: &mut Criterion) {
    let entry = entry();
    let encoded = entry.encode();
    c.bench_function("encode_4k_json", |b| b.iter(|| black_box(&entry).encode()));
    c.bench_function("decode_4k_json", |b| {
        b.iter(|| Entry::decode(black_box(&encoded)).unwrap())
    });
}

criterion_group!(benches, memory_get_hit, codec_4k);
criterion_main!(benches);
