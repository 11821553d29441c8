//! Rate-limit decision cost: the leaky algorithm alone, and `MemoryStore` taking one leaky charge
//! (sync and through the async `Store` trait), for one key and round-robin over 10k keys.
//!
//! `now` advances by hand, 1 µs per decision, so the bucket (1M/s, burst 1000) keeps admitting.
//!
//! Run: `cargo bench -p leaky-limit --bench limit -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use leaky_limit::{Algorithm, Charge, MemoryStore, OnStoreError, Store, Taken};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

const US: u64 = 1_000;
const T0: u64 = 1_700_000_000_000_000_000;

fn algo() -> Arc<Algorithm> {
    Arc::new(Algorithm::Leaky {
        rate: 1_000_000,
        period_ns: 1_000_000_000,
        burst: 1_000,
        shape_max_wait_ns: None,
    })
}

fn charge(key: &str, algo: &Arc<Algorithm>) -> Charge {
    Charge {
        key: Arc::from(key),
        algo: Arc::clone(algo),
        cost: 1,
        reserve: 0,
        on_error: OnStoreError::Local,
    }
}

/// Polls a future that never waits (MemoryStore's) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("MemoryStore never waits"),
    }
}

fn admitted(t: &Taken) -> bool {
    matches!(t, Taken::Admitted(_))
}

fn benches(c: &mut Criterion) {
    let a = algo();

    c.bench_function("leaky algorithm alone", |b| {
        let mut now = T0;
        let mut st = a.fresh(now);
        b.iter(|| {
            now += US;
            if let Ok((s, admit)) = a.take(black_box(&st), now, black_box(1), 0) {
                st = s;
                black_box(admit);
            }
        })
    });

    c.bench_function("memory take_sync single key", |b| {
        let store = MemoryStore::new();
        let charges = [charge("free-rpm:7f3a:k=demo-free", &a)];
        let mut now = T0;
        assert!(admitted(&store.take_sync(now, &charges)));
        b.iter(|| {
            now += US;
            black_box(store.take_sync(now, black_box(&charges)))
        })
    });

    c.bench_function("memory Store::take single key (noop-waker poll)", |b| {
        let store = MemoryStore::new();
        let charges = [charge("free-rpm:7f3a:k=demo-free", &a)];
        let mut now = T0;
        b.iter(|| {
            now += US;
            black_box(ready(store.take(now, black_box(&charges))).unwrap())
        })
    });

    c.bench_function("memory take_sync 10k keys round-robin", |b| {
        let store = MemoryStore::new();
        let keys: Vec<[Charge; 1]> = (0..10_000)
            .map(|i| [charge(&format!("free-rpm:7f3a:k=key-{i}"), &a)])
            .collect();
        let mut now = T0;
        for k in &keys {
            assert!(admitted(&store.take_sync(now, k)));
        }
        let mut i = 0;
        b.iter(|| {
            now += US;
            i = (i + 1) % keys.len();
            black_box(store.take_sync(now, black_box(&keys[i])))
        })
    });

    c.bench_function("memory take_sync two keys", |b| {
        let store = MemoryStore::new();
        let charges = [charge("rpm:k=demo", &a), charge("tpm:k=demo", &a)];
        let mut now = T0;
        b.iter(|| {
            now += US;
            black_box(store.take_sync(now, black_box(&charges)))
        })
    });
}

criterion_group!(limit, benches);
criterion_main!(limit);
