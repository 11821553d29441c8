//! The `rate-limit` filter on the in-process store with an injected clock: which policies apply to a
//! request, priority shedding on a shared pool, shaping delays (paused tokio time), concurrency slots
//! given back at completion, settlement and refunds, and bucket state kept across config versions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_filters::rate_limit::RateLimitFilter;
use leaky_filters::{Admission, AuthMethod, Filter, Principal, RejectKind, RequestCtx, Settlement};
use leaky_limit::{Limiter, MemoryStore, TokenCost, TokenUsage, UsageSource};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BASE: &str = "providers:
  openai: { base_url: http://127.0.0.1:1 }
  qwen: { base_url: http://127.0.0.1:2 }
routes:
  - { name: v1, prefix: /v1, upstream: { provider: openai } }
";

fn config(yaml: &str) -> leaky_config::Config {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, format!("{BASE}{yaml}")).unwrap();
    leaky_config::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

struct Rig {
    filter: RateLimitFilter,
    now: Arc<AtomicU64>,
}

fn rig_on(yaml: &str, store: Arc<MemoryStore>, now: Arc<AtomicU64>) -> Rig {
    let c = config(yaml);
    let clock = now.clone();
    let limiter = Limiter::new(
        &c.limits,
        &c.tiers,
        store.clone(),
        None,
        Arc::new(move || clock.load(Ordering::Relaxed)),
    )
    .unwrap()
    .with_inline_memory(store);
    Rig {
        filter: RateLimitFilter::new(Arc::new(limiter)),
        now,
    }
}

fn rig(yaml: &str) -> Rig {
    rig_on(
        yaml,
        Arc::new(MemoryStore::new()),
        Arc::new(AtomicU64::new(1_800_000_000_000_000_000)),
    )
}

fn ctx(key: &str, tier: &str, org: &str, provider: &str) -> RequestCtx {
    RequestCtx {
        principal: Some(Arc::new(Principal {
            id: key.into(),
            user: format!("user-{key}").into(),
            org: Some(org.into()),
            tier: tier.into(),
            roles: Arc::from(Vec::new()),
            models: Arc::from(Vec::new()),
            method: AuthMethod::ApiKey,
        })),
        model: Some("gpt-4o".into()),
        provider: Some(provider.into()),
        route: Some("v1".into()),
        cost: Some(TokenCost {
            prompt: 10,
            max_completion: Some(90),
            choices: 1,
        }),
        ..Default::default()
    }
}

/// Settles what `a` holds, as the proxy's ledger does when the usage is known.
async fn settle(a: Admission, status: u16, usage: Option<TokenUsage>) {
    let outcome = Settlement {
        status: Some(status),
        usage,
    };
    for h in a.holds {
        h.settle(&outcome).await;
    }
}

/// Settles what `a` holds at the end of a request without usage, as the ledger does from `logging`.
fn finish(a: Admission, status: u16) {
    let outcome = Settlement {
        status: Some(status),
        usage: None,
    };
    for h in a.holds {
        h.finish(&outcome);
    }
}

fn header<'a>(c: &'a RequestCtx, name: &str) -> Option<&'a str> {
    c.response_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
}

#[tokio::test]
async fn shared_pool_sheds_low_priority_first() {
    let r = rig("tiers:
  free: { priority: low }
  ent: { priority: high }
limits:
  policies:
    - { name: org, unit: tokens, rate: 1000, per: hour, scope: [org], reserve: { low: 0.3 } }
");
    // Low priority may use the pool down to 30% (700 tokens = 7 requests of 100). Admitted
    // requests are kept in flight: a dropped hold gives its reservation back.
    let mut held = Vec::new();
    for i in 0..10 {
        let mut c = ctx(&format!("k{i}"), "free", "acme", "openai");
        if let Ok(a) = r.filter.on_admit(&mut c).await {
            held.push(a);
        }
    }
    assert_eq!(held.len(), 7);
    // High priority still gets the reserved 30%, from the same org pool.
    for _ in 0..3 {
        let mut c = ctx("boss", "ent", "acme", "openai");
        held.push(r.filter.on_admit(&mut c).await.unwrap());
    }
    let mut c = ctx("boss", "ent", "acme", "openai");
    let e = r.filter.on_admit(&mut c).await.unwrap_err();
    assert_eq!(e.kind, RejectKind::TokensRateLimited);
    // Another organization has its own pool.
    let mut c = ctx("k0", "free", "other", "openai");
    assert!(r.filter.on_admit(&mut c).await.is_ok());
}

#[tokio::test]
async fn provider_pool_applies_only_to_its_provider() {
    let r = rig("tiers: { pro: {} }
limits:
  policies:
    - { name: openai-pool, unit: requests, rate: 2, per: hour, scope: [provider], match: { providers: [openai] } }
");
    let mut held = Vec::new();
    for key in ["a", "b"] {
        let mut c = ctx(key, "pro", "o", "openai");
        held.push(r.filter.on_admit(&mut c).await.unwrap());
    }
    let mut c = ctx("c", "pro", "o", "openai");
    assert!(
        r.filter.on_admit(&mut c).await.is_err(),
        "the pool is shared by every key"
    );
    let mut c = ctx("c", "pro", "o", "qwen");
    r.filter.on_admit(&mut c).await.unwrap();
    assert!(c.response_headers.is_empty(), "no policy applied to qwen");
}

#[tokio::test(start_paused = true)]
async fn shaping_delays_instead_of_refusing() {
    let r = rig("tiers:
  batch:
    limits:
      - { name: shaped, rate: 10, per: second, burst: 1, shape_max_wait_ms: 250 }
");
    let start = tokio::time::Instant::now();
    let mut delays = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = ctx("k", "batch", "o", "openai");
        let before = tokio::time::Instant::now();
        held.push(r.filter.on_admit(&mut c).await.unwrap());
        delays.push(before.elapsed().as_millis());
    }
    // 1 now, then one every 100 ms: queued 100, 200 ms; the 4th would wait 300 ms > 250 ms.
    assert_eq!(delays, vec![0, 100, 200]);
    let mut c = ctx("k", "batch", "o", "openai");
    let e = r.filter.on_admit(&mut c).await.unwrap_err();
    assert_eq!(e.kind, RejectKind::RateLimited);
    assert!(e.message.contains("try again in 300ms"), "{}", e.message);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "the filter slept the delays"
    );
}

#[tokio::test]
async fn concurrency_slots_come_back_at_completion() {
    let r = rig("tiers:
  pro:
    limits:
      - { name: inflight, unit: concurrent_requests, limit: 2 }
");
    let mut a = ctx("k", "pro", "o", "openai");
    let mut b = ctx("k", "pro", "o", "openai");
    let held_a = r.filter.on_admit(&mut a).await.unwrap();
    let _held_b = r.filter.on_admit(&mut b).await.unwrap();
    let mut c = ctx("k", "pro", "o", "openai");
    assert!(r.filter.on_admit(&mut c).await.is_err());
    finish(held_a, 200);
    let held_c = r.filter.on_admit(&mut c).await.unwrap();
    // A request dropped without settling (cancelled) gives its slot back too.
    drop(held_c);
    let mut d = ctx("k", "pro", "o", "openai");
    r.filter.on_admit(&mut d).await.unwrap();
}

#[tokio::test]
async fn settles_with_reported_usage_and_refunds_failures() {
    let r = rig("tiers:
  pro:
    limits:
      - { name: day, unit: tokens, quota: daily, limit: 1000 }
      - { name: out, unit: completion_tokens, quota: daily, limit: 1000 }
");
    let remaining = |c: &RequestCtx, p: &str| -> u64 {
        let f = header(c, "ratelimit").unwrap();
        let item = f
            .split(", ")
            .find(|i| i.contains(&format!("\"{p}\"")))
            .unwrap();
        item.split(';')
            .find_map(|kv| kv.strip_prefix("r="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut a = ctx("k", "pro", "o", "openai");
    let held_a = r.filter.on_admit(&mut a).await.unwrap();
    assert_eq!((remaining(&a, "day"), remaining(&a, "out")), (900, 910));
    let usage = TokenUsage {
        prompt: 12,
        completion: 30,
        source: UsageSource::Reported,
    };
    // Settling consumes the hold: it cannot be settled twice.
    settle(held_a, 200, Some(usage)).await;

    let mut b = ctx("k", "pro", "o", "openai");
    let held_b = r.filter.on_admit(&mut b).await.unwrap();
    assert_eq!(
        (remaining(&b, "day"), remaining(&b, "out")),
        (1000 - 42 - 100, 1000 - 30 - 90)
    );
    // The upstream failed: everything b reserved comes back.
    finish(held_b, 502);
    let mut c = ctx("k", "pro", "o", "openai");
    let _held_c = r.filter.on_admit(&mut c).await.unwrap();
    assert_eq!(remaining(&c, "day"), 1000 - 42 - 100);
    // Reset headers count down to the window's end (the clock is injected).
    r.now.fetch_add(3_600_000_000_000, Ordering::Relaxed);
    let mut d = ctx("k", "pro", "o", "openai");
    let _held_d = r.filter.on_admit(&mut d).await.unwrap();
    assert_eq!(remaining(&d, "day"), 1000 - 42 - 100 - 100);
}

#[tokio::test]
async fn unchanged_policies_keep_their_buckets_across_versions() {
    let store = Arc::new(MemoryStore::new());
    let now = Arc::new(AtomicU64::new(1_800_000_000_000_000_000));
    let v1 = "tiers:
  pro:
    limits:
      - { name: rpm, rate: 2, per: hour }
";
    let r1 = rig_on(v1, store.clone(), now.clone());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = ctx("k", "pro", "o", "openai");
        held.push(r1.filter.on_admit(&mut c).await.unwrap());
    }
    // The same policy in a new config version (another filter instance): still exhausted.
    let r2 = rig_on(
        &format!("{v1}      - {{ name: other, rate: 9, per: hour }}\n"),
        store.clone(),
        now.clone(),
    );
    let mut c = ctx("k", "pro", "o", "openai");
    assert!(r2.filter.on_admit(&mut c).await.is_err());
    // An edited policy starts fresh.
    let r3 = rig_on(&v1.replace("rate: 2", "rate: 3"), store, now);
    let mut c = ctx("k", "pro", "o", "openai");
    assert!(r3.filter.on_admit(&mut c).await.is_ok());
}

#[tokio::test]
async fn an_exhausted_quota_is_insufficient_quota_until_the_window_rolls() {
    let r = rig("tiers:
  pro:
    limits:
      - { name: day, unit: requests, quota: daily, limit: 1 }
");
    let mut a = ctx("k", "pro", "o", "openai");
    let _held_a = r.filter.on_admit(&mut a).await.unwrap();
    let mut b = ctx("k", "pro", "o", "openai");
    let e = r.filter.on_admit(&mut b).await.unwrap_err();
    assert_eq!(e.kind, RejectKind::QuotaExceeded);
    assert!(
        e.message
            .starts_with("You exceeded your daily quota of 1 requests (policy `day`)"),
        "{}",
        e.message
    );
    assert!(header(&b, "retry-after").is_some());
    r.now.fetch_add(86_400_000_000_000, Ordering::Relaxed);
    let mut c = ctx("k", "pro", "o", "openai");
    r.filter.on_admit(&mut c).await.unwrap();
}

/// `r=` of `policy` in the context's `RateLimit` header.
fn left(c: &RequestCtx, policy: &str) -> u64 {
    let f = header(c, "ratelimit").unwrap();
    let item = f
        .split(", ")
        .find(|i| i.contains(&format!("\"{policy}\"")))
        .unwrap();
    item.split(';')
        .find_map(|kv| kv.strip_prefix("r="))
        .unwrap()
        .parse()
        .unwrap()
}

fn uncapped(choices: u64) -> RequestCtx {
    let mut c = ctx("k", "pro", "o", "openai");
    c.cost = Some(TokenCost {
        prompt: 10,
        max_completion: None,
        choices,
    });
    c
}

#[tokio::test]
async fn choices_multiply_the_default_and_an_enforcing_policy_caps_uncapped_requests() {
    let r = rig("limits:
  default_max_tokens: 100
  policies:
    - { name: shared, unit: tokens, quota: daily, limit: 100000, default_max_tokens: 50, enforce_max_tokens: true }
    - { name: prompts, unit: prompt_tokens, quota: daily, limit: 100000 }
tiers:
  pro:
    limits:
      - { name: day, unit: tokens, quota: daily, limit: 10000 }
");
    let mut a = uncapped(3);
    let held_a = r.filter.on_admit(&mut a).await.unwrap();
    // Each policy reserves its own per-choice default times the choices.
    assert_eq!(left(&a, "day"), 10000 - 10 - 300);
    assert_eq!(left(&a, "shared"), 100000 - 10 - 150);
    assert_eq!(left(&a, "prompts"), 100000 - 10);
    // Only `shared` enforces: its default goes upstream as the per-choice cap.
    assert_eq!(held_a.completion_cap, Some(50));
    assert_eq!(held_a.reserved_completion, 300);

    // A capped request is sent as it is.
    let mut b = ctx("k", "pro", "o", "openai");
    let held_b = r.filter.on_admit(&mut b).await.unwrap();
    assert_eq!(held_b.completion_cap, None);

    // No usage to be had: each bucket is charged what it reserved, or the settled numbers when
    // larger (b, capped at 90, stays reserved).
    let usage = TokenUsage {
        prompt: 10,
        completion: 200,
        source: UsageSource::Reservation,
    };
    settle(held_a, 200, Some(usage)).await;
    let mut c = uncapped(1);
    let _held_c = r.filter.on_admit(&mut c).await.unwrap();
    assert_eq!(left(&c, "day"), 10000 - 310 - 100 - 110);
    assert_eq!(left(&c, "shared"), 100000 - 210 - 100 - 60);
}
