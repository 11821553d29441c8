//! Validation of the resilience settings (`spec::resilience` → `model::resilience`): deployments, breaker, health check,
//! bulkheads, timeouts, retries and fallbacks. Each rule has an invalid fixture in `config/tests/invalid/`.

use crate::model::{
    Breaker, Bulkhead, Deployment, Fallbacks, HealthCheck, ModelPattern, ModelSource, Retry, Route,
    RouteUpstream, Secret, Timeouts, MAX_MIN_TENANTS,
};
use crate::spec::{
    BreakerSpec, BulkheadSpec, DeploymentSpec, FailureKind, HealthCheckSpec, ProviderSpec,
    RetrySpec, RouteSpec, TimeoutsSpec,
};
use crate::validate::Check;
use std::collections::HashSet;
use std::time::Duration;

/// Default concurrency of a deployment when the provider sets no `bulkhead`.
pub const DEFAULT_DEPLOYMENT_CONCURRENCY: u32 = 1024;

/// `(tls, host, port)` of a provider or deployment endpoint.
pub(crate) type BaseUrl = (bool, String, u16);

/// `(tls, host, port)` of an `http(s)://host[:port]` URL without a path.
pub(crate) fn base_url(c: &mut Check<'_>, path: &str, raw: &str) -> Option<BaseUrl> {
    let url = c.interpolated(path, raw)?;
    let bad = |c: &mut Check<'_>| {
        c.err(
            path,
            format!("`{url}` is not an http(s)://host[:port] URL without a path"),
        );
        None
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad(c);
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return bad(c),
    };
    let (Some(host), true) = (
        uri.host(),
        matches!(uri.path(), "" | "/") && uri.query().is_none(),
    ) else {
        return bad(c);
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Some((tls, host, port))
}

/// The provider's pool: its `deployments`, or one named `default` at `base_url`.
pub(crate) fn deployments(
    c: &mut Check<'_>,
    path: &str,
    p: &ProviderSpec,
    credential: &Option<Secret>,
    main: Option<&BaseUrl>,
) -> Option<Vec<Deployment>> {
    let bulkhead = p
        .bulkhead
        .as_ref()
        .map_or(DEFAULT_DEPLOYMENT_CONCURRENCY, |b| b.max_concurrent);
    if p.deployments.is_empty() {
        let (tls, host, port) = main?.clone();
        return Some(vec![Deployment {
            name: "default".into(),
            tls,
            host,
            port,
            credential: credential.clone(),
            weight: 1,
            rpm: None,
            tpm: None,
            max_concurrent: bulkhead,
        }]);
    }
    let errors = c.error_count();
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(p.deployments.len());
    for (i, d) in p.deployments.iter().enumerate() {
        let at = format!("{path}.deployments[{i}]");
        out.extend(deployment(c, &at, d, credential, bulkhead, &mut names));
    }
    (c.error_count() == errors).then_some(out)
}

/// One entry of `deployments` at `at`; its credential defaults to the provider's, its concurrency to
/// the provider's bulkhead.
fn deployment<'a>(
    c: &mut Check<'_>,
    at: &str,
    d: &'a DeploymentSpec,
    credential: &Option<Secret>,
    bulkhead: u32,
    names: &mut HashSet<&'a str>,
) -> Option<Deployment> {
    if d.name.is_empty()
        || !d
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        c.err(
            &format!("{at}.name"),
            format!(
                "deployment name `{}` must be non-empty letters, digits, `-`, `_` or `.`",
                d.name
            ),
        );
    } else if !names.insert(d.name.as_str()) {
        c.err(
            &format!("{at}.name"),
            format!("duplicate deployment name `{}`", d.name),
        );
    }
    deployment_bounds(c, at, d);
    let cred = match &d.credential {
        Some(s) => c
            .interpolated(&format!("{at}.credential"), s)
            .map(Secret::new),
        None => credential.clone(),
    };
    let (tls, host, port) = base_url(c, &format!("{at}.base_url"), &d.base_url)?;
    Some(Deployment {
        name: d.name.clone(),
        tls,
        host,
        port,
        credential: cred,
        weight: d.weight,
        rpm: d.rpm,
        tpm: d.tpm,
        max_concurrent: d.max_concurrent.unwrap_or(bulkhead),
    })
}

/// A deployment's weight, budgets and concurrency: each at least 1 when set.
fn deployment_bounds(c: &mut Check<'_>, at: &str, d: &DeploymentSpec) {
    if d.weight == 0 {
        c.err(&format!("{at}.weight"), "`weight` must be at least 1");
    }
    for (field, v) in [("rpm", d.rpm), ("tpm", d.tpm)] {
        if v == Some(0) {
            c.err(
                &format!("{at}.{field}"),
                format!("`{field}` must be at least 1 (omit it for no budget)"),
            );
        }
    }
    if d.max_concurrent == Some(0) {
        c.err(
            &format!("{at}.max_concurrent"),
            "`max_concurrent` must be at least 1",
        );
    }
}

pub(crate) fn breaker(c: &mut Check<'_>, path: &str, b: &BreakerSpec) -> Breaker {
    breaker_rules(c, path, b);
    let has = |k| b.failure_on.contains(&k);
    Breaker {
        consecutive_failures: b.consecutive_failures,
        failure_ratio: b.failure_ratio,
        min_requests: b.min_requests,
        window_ms: b.window_ms,
        open_ms: b.open_ms,
        max_open_ms: b.max_open_ms,
        half_open_probes: b.half_open_probes,
        probe_timeout_ms: b.probe_timeout_ms,
        min_tenants: b.min_tenants,
        max_cooldown_ms: b.max_cooldown_ms,
        on_connect: has(FailureKind::Connect),
        on_timeout: has(FailureKind::Timeout),
        on_5xx: has(FailureKind::ServerError),
        on_429: has(FailureKind::TooManyRequests),
    }
}

/// The breaker's numeric bounds (each rule off at 0 where the docs say so).
fn breaker_rules(c: &mut Check<'_>, path: &str, b: &BreakerSpec) {
    if !(0.0..=1.0).contains(&b.failure_ratio) {
        c.err(
            &format!("{path}.failure_ratio"),
            format!(
                "`failure_ratio` {} must be within 0..=1 (0 turns the rule off)",
                b.failure_ratio
            ),
        );
    }
    if b.window_ms == 0 {
        c.err(
            &format!("{path}.window_ms"),
            "`window_ms` must be at least 1",
        );
    }
    if b.open_ms == 0 || b.max_open_ms < b.open_ms {
        c.err(
            &format!("{path}.max_open_ms"),
            format!(
                "`open_ms` ({}) must be at least 1 and at most `max_open_ms` ({})",
                b.open_ms, b.max_open_ms
            ),
        );
    }
    if b.half_open_probes == 0 {
        c.err(
            &format!("{path}.half_open_probes"),
            "`half_open_probes` must be at least 1",
        );
    }
    if b.probe_timeout_ms == 0 {
        c.err(
            &format!("{path}.probe_timeout_ms"),
            "`probe_timeout_ms` must be at least 1",
        );
    }
    let max_tenants = MAX_MIN_TENANTS;
    if b.min_tenants == 0 || b.min_tenants > max_tenants {
        c.err(
            &format!("{path}.min_tenants"),
            format!(
                "`min_tenants` {} must be within 1..={max_tenants} (1: one tenant's failures may open the circuit)",
                b.min_tenants
            ),
        );
    }
}

pub(crate) fn health_check(
    c: &mut Check<'_>,
    path: &str,
    h: &HealthCheckSpec,
) -> Option<HealthCheck> {
    let errors = c.error_count();
    if !h.path.starts_with('/') {
        c.err(
            &format!("{path}.path"),
            format!("`{}` must be a path starting with `/`", h.path),
        );
    }
    if h.interval_ms == 0 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        c.err(
            &format!("{path}.timeout_ms"),
            format!(
                "`timeout_ms` ({}) must be at least 1 and at most `interval_ms` ({})",
                h.timeout_ms, h.interval_ms
            ),
        );
    }
    if h.unhealthy_after == 0 || h.healthy_after == 0 {
        c.err(
            path,
            "`unhealthy_after` and `healthy_after` must be at least 1",
        );
    }
    (c.error_count() == errors).then(|| HealthCheck {
        path: h.path.clone(),
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        unhealthy_after: h.unhealthy_after,
        healthy_after: h.healthy_after,
    })
}

pub(crate) fn bulkhead(c: &mut Check<'_>, path: &str, b: &BulkheadSpec) -> Bulkhead {
    if b.max_concurrent == 0 {
        c.err(
            &format!("{path}.max_concurrent"),
            "`max_concurrent` must be at least 1",
        );
    }
    Bulkhead {
        max_concurrent: b.max_concurrent,
        max_queue: b.max_queue,
        queue_timeout: Duration::from_millis(b.queue_timeout_ms),
    }
}

/// A route's timeouts, retry policy, fallbacks and tenant bulkhead, set on `route`.
pub(crate) fn route(c: &mut Check<'_>, path: &str, spec: &RouteSpec, route: &mut Route) {
    route.timeouts = timeouts(c, path, &spec.timeouts);
    route.retry = retry(c, path, &spec.retry);
    route.fallbacks = fallbacks(c, path, spec, route);
    if matches!(route.upstream, RouteUpstream::Fixed(_))
        && route.model_source == ModelSource::None
        && !route.fallbacks.is_empty()
    {
        c.err(
            &format!("{path}.fallbacks"),
            "fallbacks need a model: this route has `model_source: none`",
        );
    }
    route.tenant_bulkhead = spec
        .bulkhead
        .per_tenant
        .as_ref()
        .map(|b| bulkhead(c, &format!("{path}.bulkhead.per_tenant"), b));
}

/// `timeouts`: each set one at least 1 ms; `total` defaults to ten minutes.
fn timeouts(c: &mut Check<'_>, path: &str, t: &TimeoutsSpec) -> Timeouts {
    for (field, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("idle_ms", t.idle_ms),
        ("total_ms", t.total_ms),
    ] {
        if v == Some(0) {
            c.err(
                &format!("{path}.timeouts.{field}"),
                format!("`{field}` must be at least 1"),
            );
        }
    }
    Timeouts {
        connect: t.connect_ms.map(Duration::from_millis),
        first_byte: t.first_byte_ms.map(Duration::from_millis),
        idle: t.idle_ms.map(Duration::from_millis),
        total: Duration::from_millis(t.total_ms.unwrap_or(600_000)),
    }
}

/// `retry`: attempts, budget, backoff and what is retried.
fn retry(c: &mut Check<'_>, path: &str, r: &RetrySpec) -> Retry {
    let at = format!("{path}.retry");
    if r.max_attempts == 0 {
        c.err(
            &format!("{at}.max_attempts"),
            "`max_attempts` must be at least 1 (1: no retries)",
        );
    }
    if !(0.0..=10.0).contains(&r.budget_ratio) {
        c.err(
            &format!("{at}.budget_ratio"),
            format!(
                "`budget_ratio` {} must be within 0..=10 (retries per request)",
                r.budget_ratio
            ),
        );
    }
    if r.budget_window_ms < 1_000 {
        c.err(
            &format!("{at}.budget_window_ms"),
            "`budget_window_ms` must be at least 1000",
        );
    }
    if r.backoff_max_ms < r.backoff_base_ms {
        c.err(
            &format!("{at}.backoff_max_ms"),
            format!(
                "`backoff_max_ms` ({}) is below `backoff_base_ms` ({})",
                r.backoff_max_ms, r.backoff_base_ms
            ),
        );
    }
    let mut retry = Retry {
        max_attempts: r.max_attempts,
        budget_ratio: r.budget_ratio,
        budget_min_per_second: r.budget_min_per_second,
        budget_window_ms: r.budget_window_ms,
        backoff_base_ms: r.backoff_base_ms,
        backoff_max_ms: r.backoff_max_ms,
        on_connect: false,
        on_timeout: false,
        statuses: Vec::new(),
    };
    for (i, what) in r.retry_on.iter().enumerate() {
        match what.as_str() {
            "connect" => retry.on_connect = true,
            "timeout" => retry.on_timeout = true,
            s => match s.parse::<u16>() {
                Ok(code) if code == 408 || code == 409 || code == 429 || (500..600).contains(&code) => {
                    retry.statuses.push(code)
                }
                _ => c.err(
                    &format!("{at}.retry_on[{i}]"),
                    format!("`{s}` cannot be retried (use `connect`, `timeout`, 408, 409, 429 or a 5xx status)"),
                ),
            },
        }
    }
    retry
}

/// `fallbacks`, most specific pattern first; each alternative must be served by `route`.
fn fallbacks(c: &mut Check<'_>, path: &str, spec: &RouteSpec, route: &Route) -> Fallbacks {
    let mut fallbacks = Vec::with_capacity(spec.fallbacks.len());
    for (model, alts) in &spec.fallbacks {
        let at = format!("{path}.fallbacks.{model}");
        if alts.is_empty() {
            c.err(&at, "list at least one fallback model");
        }
        for (i, alt) in alts.iter().enumerate() {
            if alt.contains('*') || alt == model {
                c.err(
                    &format!("{at}[{i}]"),
                    format!("fallback `{alt}` must be a model name other than `{model}`"),
                );
            } else if route.target_for(alt).is_none() {
                c.err(
                    &format!("{at}[{i}]"),
                    format!(
                        "fallback model `{alt}` is not served by route `{}`",
                        route.name
                    ),
                );
            }
        }
        fallbacks.push((ModelPattern::parse(model), alts.clone()));
    }
    // Exact names before patterns, longer patterns first: the most specific entry wins.
    fallbacks.sort_by_key(|(p, _)| match p {
        ModelPattern::Exact(_) => (0, 0),
        ModelPattern::Prefix(s) => (1, usize::MAX - s.len()),
    });
    fallbacks
}
