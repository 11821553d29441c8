//! The `rate-limit` filter's cost per request, for instruction counts (issue 19): the filter built
//! from `loadtests/bench.d/full-memory.yaml` (three buckets on the bench tier: requests per minute,
//! tokens per minute, a daily token quota) on the in-process store, driven through `on_admit` and the
//! settle path (`Hold::settle` with the provider's reported usage) as the proxy drives it, for a
//! handful of keys in turn.
//!
//! Instructions per request are the difference of two runs divided by the difference of their
//! request counts, so the setup (config load, the first request's buckets) cancels out:
//!
//! ```text
//! cargo build --release -p leaky-filters --example admit_cost
//! valgrind --tool=callgrind --callgrind-out-file=a.out target/release/examples/admit_cost 10000
//! valgrind --tool=callgrind --callgrind-out-file=b.out target/release/examples/admit_cost 110000
//! # (total(b) − total(a)) / 100000; where they go: callgrind_annotate --inclusive=yes b.out
//! ```
//!
//! `--digest` also hashes every response header the filter added and the decision counts,
//! and prints the hash: a change that keeps behaviour keeps it (run without it for counts: hashing
//! costs instructions too).
//!
//! The clock is injected (1 µs per request), so the runs are deterministic; the proxy's clock reads
//! (two per request) are not in the figure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]
// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to mimalloc.
#![allow(unsafe_code)]

use leaky_filters::rate_limit::RateLimitFilter;
use leaky_filters::{AuthMethod, Filter, Principal, RequestCtx, Settlement};
use leaky_limit::{Decision, Limiter, MemoryStore, TokenCost, TokenUsage, UsageSource};
use std::alloc::{GlobalAlloc, Layout};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// The proxy's allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `MiMalloc.alloc` with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `MiMalloc.alloc` with this layout.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: u64 = 1_800_000_000_000_000_000;
const KEYS: usize = 4;

/// Polls a future that never waits (the in-process store's path, no shaping) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the in-process store never waits"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("request count"));
    let digest = args.next().as_deref() == Some("--digest");

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../loadtests/bench.d/full-memory.yaml"
    );
    let config = leaky_config::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(MemoryStore::new());
    let now = Arc::new(AtomicU64::new(T0));
    let clock = now.clone();
    let limiter = Limiter::new(
        &config.limits,
        &config.tiers,
        store.clone(),
        None,
        Arc::new(move || clock.load(Ordering::Relaxed)),
    )
    .unwrap()
    .with_inline_memory(store.clone());
    // Like the proxy's sink: one counter per (policy, decision).
    let counters: Arc<Vec<[AtomicU64; 5]>> = Arc::new(
        (0..limiter.policies.len())
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect(),
    );
    let sink = counters.clone();
    let filter = RateLimitFilter::new(Arc::new(limiter)).with_decisions(Some(Arc::new(
        move |policy, decision: Decision| {
            let slot = Decision::ALL.iter().position(|d| *d == decision);
            if let (Some(c), Some(i)) = (sink.get(policy), slot) {
                c[i].fetch_add(1, Ordering::Relaxed);
            }
        },
    )));

    let principals: Vec<Arc<Principal>> = (0..KEYS)
        .map(|i| {
            Arc::new(Principal {
                id: format!("bench-{i}").into(),
                user: "bench".into(),
                org: None,
                tier: "bench".into(),
                roles: Arc::from(Vec::new()),
                models: Arc::from(Vec::new()),
                method: AuthMethod::ApiKey,
            })
        })
        .collect();
    let mut ctx = RequestCtx {
        model: Some("gpt-4o-mini".into()),
        provider: Some("openai".into()),
        route: Some("v1".into()),
        // `payloads/chat.json`: a one-line prompt, `max_tokens: 16`.
        cost: Some(TokenCost {
            prompt: 14,
            max_completion: Some(16),
            choices: 1,
        }),
        ..Default::default()
    };
    let outcome = Settlement {
        status: Some(200),
        usage: Some(TokenUsage {
            prompt: 14,
            completion: 9,
            source: UsageSource::Reported,
        }),
    };

    let mut h = DefaultHasher::new();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..n {
        now.fetch_add(1_000, Ordering::Relaxed);
        ctx.principal = Some(principals[i as usize % KEYS].clone());
        let admission = ready(filter.on_admit(&mut ctx)).unwrap_or_else(|r| panic!("{r:?}"));
        let headers = std::mem::take(&mut ctx.response_headers);
        if digest {
            for (name, value) in &headers {
                name.as_str().hash(&mut h);
                value.as_bytes().hash(&mut h);
            }
        }
        drop(headers);
        for hold in admission.holds {
            ready(hold.settle(&outcome));
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    if digest {
        // One more admission per key: its headers show every bucket's standing after the last
        // settlement.
        for p in &principals {
            now.fetch_add(1_000, Ordering::Relaxed);
            ctx.principal = Some(p.clone());
            let admission = ready(filter.on_admit(&mut ctx)).unwrap_or_else(|r| panic!("{r:?}"));
            for (name, value) in std::mem::take(&mut ctx.response_headers) {
                name.as_str().hash(&mut h);
                value.as_bytes().hash(&mut h);
            }
            drop(admission); // refunds: the hold is dropped unsettled
        }
        for c in counters.iter() {
            for d in c {
                d.load(Ordering::Relaxed).hash(&mut h);
            }
        }
        println!(
            "requests {n}, allocations/request {:.2}, buckets {}, digest {:016x}",
            allocations as f64 / n.max(1) as f64,
            store.len(),
            h.finish()
        );
    }
}
