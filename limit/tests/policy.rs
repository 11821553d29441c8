//! Policies over a `Subject`, the engine's own view of a request (no filter chain involved): which
//! policies a subject's tier and `match` select, how `scope` keys its bucket, what it costs, what can
//! never fit, and the typed error of a limits section that cannot compile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_config::PolicyKind;
use leaky_limit::{Limiter, MemoryStore, PolicyError, Subject, TokenCost};
use std::sync::Arc;

const BASE: &str = "providers:
  openai: { base_url: http://127.0.0.1:1 }
routes:
  - { name: v1, prefix: /v1, upstream: { provider: openai } }
";

fn config(yaml: &str) -> leaky_config::Config {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, format!("{BASE}{yaml}")).unwrap();
    leaky_config::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn limiter(yaml: &str) -> Limiter {
    let c = config(yaml);
    Limiter::new(
        &c.limits,
        &c.tiers,
        Arc::new(MemoryStore::new()),
        None,
        Arc::new(|| 0),
    )
    .unwrap()
}

const COST: TokenCost = TokenCost {
    prompt: 10,
    max_completion: Some(90),
    choices: 1,
};

fn subject(tier: &str) -> Subject<'_> {
    Subject {
        key: Some("key-a"),
        user: Some("user-a"),
        org: Some("acme"),
        tier: Some(tier),
        model: Some("gpt-4o"),
        provider: Some("openai"),
        route: Some("v1"),
        cost: Some(COST),
    }
}

/// The names of the policies charged for `s`, in charge order.
fn charged(l: &Limiter, s: &Subject<'_>) -> Vec<String> {
    let c = l.charges(s);
    c.which
        .iter()
        .map(|i| l.policies[*i].name.to_string())
        .collect()
}

#[test]
fn tier_selects_its_limits_and_the_untiered_policies() {
    let l = limiter(
        "tiers:
  free: { limits: [ { name: free-rpm, unit: requests, rate: 20, per: minute } ] }
  pro: { limits: [ { name: pro-rpm, unit: requests, rate: 600, per: minute } ] }
limits:
  policies:
    - { name: all-rpm, unit: requests, rate: 1000, per: minute, scope: [org] }
",
    );
    // Shared policies come first in config order, then the tiers' own.
    assert_eq!(charged(&l, &subject("free")), ["all-rpm", "free-rpm"]);
    assert_eq!(charged(&l, &subject("pro")), ["all-rpm", "pro-rpm"]);
    // Unknown tier and anonymous caller: untiered policies only.
    assert_eq!(charged(&l, &subject("gold")), ["all-rpm"]);
    let anonymous = Subject {
        tier: None,
        ..subject("free")
    };
    assert_eq!(charged(&l, &anonymous), ["all-rpm"]);
}

#[test]
fn match_reads_model_provider_and_route_from_the_subject() {
    let l = limiter(
        "tiers: { pro: {} }
limits:
  policies:
    - { name: gpt, unit: requests, rate: 9, per: minute, match: { models: [\"gpt-*\"] } }
    - { name: openai, unit: requests, rate: 9, per: minute, match: { providers: [openai] } }
    - { name: v1, unit: requests, rate: 9, per: minute, match: { routes: [v1] } }
",
    );
    assert_eq!(charged(&l, &subject("pro")), ["gpt", "openai", "v1"]);
    let other = Subject {
        model: Some("qwen-max"),
        provider: Some("qwen"),
        route: Some("qwen"),
        ..subject("pro")
    };
    assert!(charged(&l, &other).is_empty());
    // Not known yet (no model, no provider): a policy that matches on it does not apply.
    let unknown = Subject {
        model: None,
        provider: None,
        ..subject("pro")
    };
    assert_eq!(charged(&l, &unknown), ["v1"]);
}

#[test]
fn scope_keys_the_bucket_by_the_subjects_dimensions() {
    let l = limiter(
        "tiers: { pro: {} }
limits:
  policies:
    - { name: all, unit: requests, rate: 9, per: minute,
        scope: [key, user, org, tier, model, provider, route] }
",
    );
    let c = l.charges(&subject("pro"));
    let key = &c.charges[0].key;
    assert!(key.starts_with("all:"), "{key}");
    assert!(
        key.ends_with(":k=key-a,u=user-a,o=acme,t=pro,m=gpt-4o,p=openai,r=v1"),
        "{key}"
    );
    // Absent values key as `-`: every anonymous caller shares one bucket.
    let c = l.charges(&Subject::default());
    assert!(c.charges[0].key.ends_with(":k=-,u=-,o=-,t=-,m=-,p=-,r=-"));
}

#[test]
fn cost_comes_from_the_subject_and_token_policies_skip_without_one() {
    let l = limiter(
        "tiers: { pro: {} }
limits:
  default_max_tokens: 100
  policies:
    - { name: rpm, unit: requests, rate: 9, per: minute }
    - { name: tpm, unit: tokens, rate: 9000, per: minute }
    - { name: ppm, unit: prompt_tokens, rate: 9000, per: minute }
",
    );
    let c = l.charges(&subject("pro"));
    let costs: Vec<u64> = c.charges.iter().map(|c| c.cost).collect();
    assert_eq!(costs, [1, 100, 10]);
    assert_eq!(c.completion, 90);
    // Uncapped: the per-choice default, times the choices.
    let uncapped = Subject {
        cost: Some(TokenCost {
            prompt: 10,
            max_completion: None,
            choices: 2,
        }),
        ..subject("pro")
    };
    assert_eq!(l.charges(&uncapped).charges[1].cost, 210);
    // No token cost (e.g. `GET /models`): only the request policy charges.
    let free = Subject {
        cost: None,
        ..subject("pro")
    };
    assert_eq!(charged(&l, &free), ["rpm"]);
}

#[test]
fn never_fits_names_the_first_policy_the_cost_cannot_fit() {
    let l = limiter(
        "tiers: { pro: {} }
limits:
  policies:
    - { name: rpm, unit: requests, rate: 9, per: minute }
    - { name: tpm, unit: tokens, rate: 50, per: minute }
",
    );
    assert_eq!(l.never_fits(&subject("pro")), Some((1, 100)));
    let small = Subject {
        cost: Some(TokenCost {
            prompt: 1,
            max_completion: Some(1),
            choices: 1,
        }),
        ..subject("pro")
    };
    assert_eq!(l.never_fits(&small), None);
}

#[test]
fn an_unknown_time_zone_is_a_typed_error() {
    // Validation refuses it first; the engine still refuses rather than guess (e.g. a pushed
    // config that skipped validation).
    let mut c = config(
        "tiers: { pro: {} }
limits:
  policies:
    - { name: daily, unit: tokens, quota: daily, limit: 1000 }
",
    );
    match &mut c.limits.policies[0].kind {
        PolicyKind::Quota { timezone, .. } => *timezone = "Mars/Olympus_Mons".into(),
        other => panic!("not a quota: {other:?}"),
    }
    let e = Limiter::new(
        &c.limits,
        &c.tiers,
        Arc::new(MemoryStore::new()),
        None,
        Arc::new(|| 0),
    )
    .err()
    .unwrap();
    assert_eq!(e, PolicyError::UnknownTimeZone("Mars/Olympus_Mons".into()));
    assert_eq!(e.to_string(), "unknown time zone `Mars/Olympus_Mons`");
}
