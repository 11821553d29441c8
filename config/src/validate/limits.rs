//! `limits:` and `tiers.*.limits` → validated `Limits`. Each rule has an invalid fixture in
//! `config/tests/invalid/` (files named `limit-*.yaml`).

use crate::model::{
    AlgorithmKind, Dimension, LimitStore, Limits, ModelPattern, OnStoreErrorSpec, Policy,
    PolicyKind, Priority, QuotaWindow, RedisSettings, Unit,
};
use crate::spec::{ConfigFile, Enforcement, LimitsSpec, PolicySpec, RedisSpec, StoreKind};
use crate::validate::Check;
use std::collections::HashSet;
use std::time::Duration;

pub(crate) fn limits(c: &mut Check<'_>, file: &ConfigFile) -> Limits {
    let spec = &file.limits;
    let store = match (spec.store, &spec.redis) {
        (StoreKind::Memory, _) => LimitStore::Memory,
        (StoreKind::Redis, None) => {
            c.err(
                "limits.store",
                "`store: redis` needs a `limits.redis` section with its `url`",
            );
            LimitStore::Memory
        }
        (StoreKind::Redis, Some(r)) => redis(c, r),
    };
    let known = Known {
        tiers: file.tiers.keys().map(String::as_str).collect(),
        // Names as written (not only the ones that validated), so one broken provider or route does
        // not also report every policy that names it.
        providers: file.providers.keys().map(String::as_str).collect(),
        routes: file.routes.iter().map(|r| r.name.as_str()).collect(),
    };
    let mut names = HashSet::new();
    let mut policies = Vec::new();
    for (i, p) in spec.policies.iter().enumerate() {
        let path = format!("limits.policies[{i}]");
        if let Some(p) = policy(c, &path, p, None, spec, &known, &mut names) {
            policies.push(p);
        }
    }
    for (tier, t) in &file.tiers {
        for (i, p) in t.limits.iter().enumerate() {
            let path = format!("tiers.{tier}.limits[{i}]");
            if let Some(p) = policy(c, &path, p, Some(tier), spec, &known, &mut names) {
                policies.push(p);
            }
        }
    }
    one_balance_policy(c, file);
    Limits {
        store,
        policies,
        balances: balances(c, file),
    }
}

/// At most one `unit: balance` policy, in `limits.policies`: an org has one prepaid account, so no
/// request may be charged twice for it (two policies, or one per tier), whatever route it takes.
fn one_balance_policy(c: &mut Check<'_>, file: &ConfigFile) {
    for (tier, t) in &file.tiers {
        if let Some(i) = t.limits.iter().position(|p| p.unit == Unit::Balance) {
            c.err(
                &format!("tiers.{tier}.limits[{i}].unit"),
                "a prepaid balance belongs to the org, not a tier: put the `unit: balance` policy in `limits.policies`",
            );
        }
    }
    let mut shared = (file.limits.policies.iter().enumerate())
        .filter(|(_, p)| p.unit == Unit::Balance)
        .map(|(i, _)| i);
    if let (Some(_), Some(i)) = (shared.next(), shared.next()) {
        c.err(
            &format!("limits.policies[{i}].unit"),
            "only one `unit: balance` policy is allowed (each org has one prepaid balance)",
        );
    }
}

/// `balances:` org → prepaid tokens. An org name becomes a Redis hash tag (`leaky:bal:{org}`), so
/// braces and whitespace are refused.
fn balances(c: &mut Check<'_>, file: &ConfigFile) -> std::collections::BTreeMap<String, u64> {
    for org in file.balances.keys() {
        if org.is_empty() || org.contains(['{', '}']) || org.chars().any(char::is_whitespace) {
            c.err(
                &format!("balances.{org}"),
                format!("org name `{org}` must be non-empty without braces or whitespace"),
            );
        }
    }
    file.balances.clone()
}

struct Known<'a> {
    tiers: HashSet<&'a str>,
    providers: HashSet<&'a str>,
    routes: HashSet<&'a str>,
}

fn redis(c: &mut Check<'_>, r: &RedisSpec) -> LimitStore {
    let url = c
        .interpolated("limits.redis.url", &r.url)
        .unwrap_or_default();
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.is_empty()) {
        c.err(
            "limits.redis.url",
            format!("`{url}` is not a Redis URL (write redis://HOST:PORT)"),
        );
    }
    for (field, v) in [("key_prefix", &r.key_prefix), ("hash_tag", &r.hash_tag)] {
        if v.is_empty() || v.contains(['{', '}', ' ']) {
            c.err(
                &format!("limits.redis.{field}"),
                format!("`{field}` must be non-empty without braces or spaces"),
            );
        }
    }
    if r.timeout_ms == 0 || r.replicas == 0 || r.failures_to_open == 0 {
        c.err(
            "limits.redis",
            "`timeout_ms`, `failures_to_open` and `replicas` must be at least 1",
        );
    }
    LimitStore::Redis(RedisSettings {
        url,
        timeout: Duration::from_millis(r.timeout_ms),
        failures_to_open: r.failures_to_open,
        open_for: Duration::from_millis(r.open_ms.max(1)),
        key_prefix: r.key_prefix.clone(),
        hash_tag: r.hash_tag.clone(),
        replicas: r.replicas.max(1),
    })
}

fn policy<'a>(
    c: &mut Check<'_>,
    path: &str,
    p: &'a PolicySpec,
    tier: Option<&str>,
    spec: &LimitsSpec,
    known: &Known<'_>,
    names: &mut HashSet<&'a str>,
) -> Option<Policy> {
    let errors_before = c.error_count();
    name(c, path, p, names);
    let kind = kind(c, path, p)?;
    matcher(c, path, p, tier, known);
    let reserve_permille = reserve(c, path, p);
    let (default_max_tokens, enforce_max_tokens) = max_tokens(c, path, p, spec);
    let mut scope = p.scope.clone().unwrap_or_else(|| {
        if p.unit == Unit::Balance {
            vec![Dimension::Org]
        } else if tier.is_some() {
            vec![Dimension::Key]
        } else {
            Vec::new()
        }
    });
    scope.sort_unstable();
    scope.dedup();
    let on_store_error = on_store_error(c, path, p, &scope);
    if c.error_count() > errors_before {
        return None;
    }
    Some(Policy {
        name: p.name.clone(),
        unit: p.unit,
        kind,
        scope,
        tiers: match tier {
            Some(t) => vec![t.to_string()],
            None => p.matcher.tiers.clone(),
        },
        models: p
            .matcher
            .models
            .iter()
            .map(|m| ModelPattern::parse(m))
            .collect(),
        providers: p.matcher.providers.clone(),
        routes: p.matcher.routes.clone(),
        reserve_permille,
        on_store_error,
        default_max_tokens,
        enforce_max_tokens,
    })
}

/// A policy's `name`: a token that can appear in headers and metric labels, unique across policies.
fn name<'a>(c: &mut Check<'_>, path: &str, p: &'a PolicySpec, names: &mut HashSet<&'a str>) {
    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        c.err(
            &format!("{path}.name"),
            format!(
                "policy name `{}` must be letters, digits, `-`, `_` or `.`",
                p.name
            ),
        );
    } else if !names.insert(p.name.as_str()) {
        c.err(
            &format!("{path}.name"),
            format!("duplicate policy name `{}`", p.name),
        );
    }
}

/// `match`: no `tiers` on a tier's own limits; every tier, provider and route it names exists.
fn matcher(c: &mut Check<'_>, path: &str, p: &PolicySpec, tier: Option<&str>, known: &Known<'_>) {
    if tier.is_some() && !p.matcher.tiers.is_empty() {
        c.err(
            &format!("{path}.match.tiers"),
            "a tier's limits apply to that tier: remove `match.tiers` (or move the policy to `limits.policies`)",
        );
    }
    for (field, list, set) in [
        ("tiers", &p.matcher.tiers, &known.tiers),
        ("providers", &p.matcher.providers, &known.providers),
        ("routes", &p.matcher.routes, &known.routes),
    ] {
        for (j, v) in list.iter().enumerate() {
            if !set.contains(v.as_str()) {
                let mut defined: Vec<&str> = set.iter().copied().collect();
                defined.sort_unstable();
                c.err(
                    &format!("{path}.match.{field}[{j}]"),
                    format!(
                        "unknown {} `{v}` (defined: {})",
                        &field[..field.len() - 1],
                        defined.join(", ")
                    ),
                );
            }
        }
    }
}

/// `reserve` as per mille kept back from each priority: [low, normal, high].
fn reserve(c: &mut Check<'_>, path: &str, p: &PolicySpec) -> [u32; 3] {
    let mut reserve_permille = [0u32; 3];
    for (prio, share) in &p.reserve {
        if !(0.0..1.0).contains(share) {
            c.err(
                &format!("{path}.reserve"),
                format!("a reserve share must be in [0, 1), got {share}"),
            );
        }
        let idx = match prio {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        };
        reserve_permille[idx] = (share.clamp(0.0, 0.999) * 1000.0).round() as u32;
    }
    reserve_permille
}

/// `(default_max_tokens, enforce_max_tokens)`, the policy's own or the `limits` defaults.
fn max_tokens(c: &mut Check<'_>, path: &str, p: &PolicySpec, spec: &LimitsSpec) -> (u64, bool) {
    let default_max_tokens = p.default_max_tokens.unwrap_or(spec.default_max_tokens);
    let enforce_max_tokens = match p.enforce_max_tokens {
        Some(true) if !p.unit.reserves_completion() => {
            c.err(
                &format!("{path}.enforce_max_tokens"),
                "`enforce_max_tokens` needs a policy that reserves completion tokens (`unit: tokens` or `completion_tokens`)",
            );
            false
        }
        Some(on) => on,
        None => spec.enforce_max_tokens && p.unit.reserves_completion(),
    };
    if enforce_max_tokens && default_max_tokens == 0 {
        c.err(
            &format!("{path}.default_max_tokens"),
            "`enforce_max_tokens` sends `default_max_tokens` upstream as the completion cap: it must be at least 1",
        );
    }
    (default_max_tokens, enforce_max_tokens)
}

/// The policy's `on_store_error`, and the rules of a balance policy's scope and reserve.
///
/// A balance fails closed by default: admitting unchecked while Redis is away spends tokens nobody
/// has paid for and nobody debits (the reservation never reaches the shared account), whereas a
/// refusal costs a retry. `fail_open` stays available for operators who prefer availability and
/// reconcile from the usage events; `local` is refused (a per-proxy share of a balance it cannot
/// see is meaningless).
fn on_store_error(
    c: &mut Check<'_>,
    path: &str,
    p: &PolicySpec,
    scope: &[Dimension],
) -> OnStoreErrorSpec {
    if p.unit != Unit::Balance {
        return p.on_store_error.unwrap_or_default();
    }
    if scope != [Dimension::Org] {
        c.err(
            &format!("{path}.scope"),
            "a `unit: balance` policy charges the org's prepaid balance: its scope is `[org]`",
        );
    }
    if !p.reserve.is_empty() {
        c.err(
            &format!("{path}.reserve"),
            "a prepaid balance keeps nothing back from lower priorities: remove `reserve`",
        );
    }
    match p.on_store_error {
        Some(OnStoreErrorSpec::Local) => {
            c.err(
                &format!("{path}.on_store_error"),
                "a prepaid balance cannot be enforced locally: use `fail_closed` (the default) or `fail_open`",
            );
            OnStoreErrorSpec::FailClosed
        }
        Some(mode) => mode,
        None => OnStoreErrorSpec::FailClosed,
    }
}

fn kind(c: &mut Check<'_>, path: &str, p: &PolicySpec) -> Option<PolicyKind> {
    let bucket = p.rate.is_some() || p.per.is_some() || p.burst.is_some();
    if p.unit == Unit::Balance {
        if bucket || p.quota.is_some() || p.limit.is_some() || p.timezone.is_some() {
            c.err(path, "a `unit: balance` policy takes no `rate`, `per`, `burst`, `quota`, `limit` or `timezone`: the org's credited balance is its limit");
            return None;
        }
        return Some(PolicyKind::Balance);
    }
    if p.unit == Unit::ConcurrentRequests {
        if bucket || p.quota.is_some() {
            c.err(path, "a `concurrent_requests` policy takes only `limit` (no `rate`, `per`, `burst` or `quota`)");
            return None;
        }
        return match p.limit {
            Some(limit) if limit > 0 => Some(PolicyKind::Concurrent { limit }),
            _ => {
                c.err(path, "a `concurrent_requests` policy needs `limit` ≥ 1");
                None
            }
        };
    }
    if let Some(window) = p.quota {
        if bucket {
            c.err(
                path,
                "a policy is either a bucket (`rate`, `per`) or a `quota` with a `limit`, not both",
            );
            return None;
        }
        return quota(c, path, p, window);
    }
    bucket_kind(c, path, p)
}

/// A `quota` policy (no bucket fields).
fn quota(c: &mut Check<'_>, path: &str, p: &PolicySpec, window: QuotaWindow) -> Option<PolicyKind> {
    let Some(limit) = p.limit.filter(|l| *l > 0) else {
        c.err(path, "a `quota` needs `limit` ≥ 1");
        return None;
    };
    let timezone = p.timezone.clone().unwrap_or_else(|| "UTC".into());
    if timezone.parse::<chrono_tz::Tz>().is_err() {
        c.err(
            &format!("{path}.timezone"),
            format!(
                "unknown time zone `{timezone}` (use an IANA name such as UTC or Europe/Berlin)"
            ),
        );
        return None;
    }
    Some(PolicyKind::Quota {
        window,
        limit,
        timezone,
        soft: p.enforcement == Enforcement::Soft,
    })
}

/// A bucket policy: `rate` and `per`, no quota fields.
fn bucket_kind(c: &mut Check<'_>, path: &str, p: &PolicySpec) -> Option<PolicyKind> {
    if p.limit.is_some() || p.timezone.is_some() {
        c.err(path, "`limit` and `timezone` belong to a `quota` or a `concurrent_requests` policy; a bucket takes `rate` and `per`");
        return None;
    }
    let (Some(rate), Some(per)) = (p.rate, p.per) else {
        c.err(path, "a policy needs `rate` and `per` (a bucket), `quota` and `limit`, or `unit: concurrent_requests` and `limit`");
        return None;
    };
    if rate == 0 || p.burst == Some(0) {
        c.err(path, "`rate` and `burst` must be at least 1");
        return None;
    }
    if p.shape_max_wait_ms.is_some() && p.algorithm != AlgorithmKind::Leaky {
        c.err(
            &format!("{path}.shape_max_wait_ms"),
            "shaping (delaying instead of refusing) needs `algorithm: leaky`",
        );
        return None;
    }
    Some(PolicyKind::Bucket {
        algorithm: p.algorithm,
        rate,
        period: per.duration(),
        burst: p.burst.unwrap_or(rate),
        shape_max_wait: p.shape_max_wait_ms.map(Duration::from_millis),
    })
}
