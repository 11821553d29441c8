//! Providers and routes: a provider's address, credential, pool and account headers; a route's prefix,
//! upstream, filters, endpoints, resilience and cache settings. Each rule has an invalid fixture in
//! `config/tests/invalid/`.

use super::resilience::BaseUrl;
use crate::model::{
    Dialect, ModelPattern, ModelSource, ModelTarget, Provider, Route, RouteUpstream, Secret,
    Target, Tier, Timeouts,
};
use crate::spec::{ConfigFile, ModelTargetSpec, ProviderSpec, RouteSpec, UpstreamSpec};
use crate::validate::Check;
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) fn provider(
    c: &mut Check<'_>,
    name: &str,
    p: &ProviderSpec,
    base_dir: &std::path::Path,
) -> Option<Provider> {
    use super::resilience as res;
    let path = format!("providers.{name}");
    let errors = c.error_count();
    let (credential, main) = credential_and_base_url(c, &path, p)?;
    let deployments = res::deployments(c, &path, p, &credential, main.as_ref());
    let breaker = res::breaker(c, &format!("{path}.breaker"), &p.breaker);
    let health_check = p
        .health_check
        .as_ref()
        .and_then(|h| res::health_check(c, &format!("{path}.health_check"), h));
    let bulkhead = p
        .bulkhead
        .as_ref()
        .map(|b| res::bulkhead(c, &format!("{path}.bulkhead"), b));
    let [organization, project, workspace] = [
        ("organization", p.organization.as_ref()),
        ("project", p.project.as_ref()),
        ("workspace", p.workspace.as_ref()),
    ]
    .map(|(field, v)| super::forwarding::account_value(c, &path, field, v));
    let forward_headers = super::forwarding::forward_headers(
        c,
        &format!("{path}.forward_headers"),
        &p.forward_headers,
    );
    let deployments = deployments?;
    let upstream_tls = super::tls::upstream(c, &path, p, &deployments, base_dir);
    if c.error_count() != errors {
        return None;
    }
    let first = deployments.first()?;
    let (tls, host, port) = main.unwrap_or((first.tls, first.host.clone(), first.port));
    Some(Provider {
        name: name.to_string(),
        tls,
        host,
        port,
        auth: p.auth,
        credential,
        models: p.models.clone(),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        read_timeout: Duration::from_millis(p.read_timeout_ms),
        idle_timeout: Duration::from_millis(p.idle_timeout_ms),
        deployments,
        breaker,
        health_check,
        bulkhead,
        organization,
        project,
        workspace,
        forward_headers,
        upstream_tls,
    })
}

/// The provider's own credential and `base_url` (`None` when either is in error, or when there is
/// neither a `base_url` nor `deployments`).
fn credential_and_base_url(
    c: &mut Check<'_>,
    path: &str,
    p: &ProviderSpec,
) -> Option<(Option<Secret>, Option<BaseUrl>)> {
    let credential = match &p.credential {
        Some(cred) => Some(Secret::new(
            c.interpolated(&format!("{path}.credential"), cred)?,
        )),
        None => None,
    };
    let main = match &p.base_url {
        Some(url) => Some(super::resilience::base_url(
            c,
            &format!("{path}.base_url"),
            url,
        )?),
        None if p.deployments.is_empty() => {
            c.err(
                path,
                "a provider needs a `base_url` or a non-empty `deployments` list",
            );
            return None;
        }
        None => None,
    };
    Some((credential, main))
}

fn normalise_prefix(c: &mut Check<'_>, path: &str, p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains("//") || p.contains(['?', '#']) {
        c.err(
            path,
            format!("`{p}` must be a path starting with `/` (no `//`, `?` or `#`)"),
        );
        return None;
    }
    let trimmed = p.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

pub(crate) fn route(
    c: &mut Check<'_>,
    path: &str,
    r: &RouteSpec,
    file: &ConfigFile,
    tiers: &BTreeMap<String, Tier>,
) -> Option<Route> {
    let prefix = normalise_prefix(c, &format!("{path}.prefix"), &r.prefix);
    let upstream = upstream(c, &format!("{path}.upstream"), &r.upstream, file);
    let filters = super::filters::filters(c, path, &r.filters, tiers);
    let model_source = r.model_source.unwrap_or(match r.dialect {
        Dialect::Google => ModelSource::Path,
        _ => ModelSource::Body,
    });
    if matches!(upstream, Some(RouteUpstream::ByModel(_))) && model_source == ModelSource::None {
        c.err(
            &format!("{path}.model_source"),
            "a route with `upstream.by_model` needs a model: `model_source` cannot be `none`",
        );
        return None;
    }
    let endpoints = super::endpoints::endpoints(
        c,
        &format!("{path}.endpoints"),
        &r.endpoints,
        r.dialect,
        tiers,
    );
    let mut route = Route {
        name: r.name.clone(),
        prefix: prefix?,
        dialect: r.dialect,
        model_source,
        upstream: upstream?,
        filters,
        timeouts: Timeouts {
            connect: None,
            first_byte: None,
            idle: None,
            total: Duration::from_secs(600),
        },
        retry: Default::default(),
        fallbacks: Vec::new(),
        tenant_bulkhead: None,
        forward_headers: super::forwarding::forward_headers(
            c,
            &format!("{path}.forward_headers"),
            &r.forward_headers,
        ),
        endpoints: endpoints?,
        cache: None,
    };
    super::resilience::route(c, path, r, &mut route);
    // After `resilience::route`: the cache's wait is bounded by the route's total timeout.
    route.cache = super::cache::of_route(c, path, r, &file.cache, tiers, &route.timeouts)?;
    Some(route)
}

fn upstream(
    c: &mut Check<'_>,
    path: &str,
    u: &UpstreamSpec,
    file: &ConfigFile,
) -> Option<RouteUpstream> {
    match (&u.provider, &u.by_model) {
        (Some(p), None) => target(c, path, p, u.path_prefix.as_deref().unwrap_or("/"), file)
            .map(RouteUpstream::Fixed),
        (None, Some(list)) if !list.is_empty() => {
            if u.path_prefix.is_some() {
                c.err(
                    &format!("{path}.path_prefix"),
                    "`path_prefix` belongs inside each `by_model` entry",
                );
                return None;
            }
            by_model(c, path, list, file)
        }
        (_, by_model) => {
            // Point at `by_model` when it is there (superfluous next to `provider`, or empty); at the
            // `upstream` mapping when it lacks both.
            let at = if by_model.is_some() {
                format!("{path}.by_model")
            } else {
                path.to_string()
            };
            c.err(
                &at,
                "`upstream` needs exactly one of `provider` or a non-empty `by_model`",
            );
            None
        }
    }
}

/// `upstream.by_model`: every entry names models and a known provider.
fn by_model(
    c: &mut Check<'_>,
    path: &str,
    list: &[ModelTargetSpec],
    file: &ConfigFile,
) -> Option<RouteUpstream> {
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let p = format!("{path}.by_model[{i}]");
        if m.models.is_empty() {
            c.err(
                &format!("{p}.models"),
                "`models` must list at least one model or pattern",
            );
        }
        let t = target(c, &p, &m.provider, &m.path_prefix, file);
        if let Some(t) = t {
            out.push(ModelTarget {
                models: m.models.iter().map(|s| ModelPattern::parse(s)).collect(),
                target: t,
            });
        }
    }
    (out.len() == list.len()).then_some(RouteUpstream::ByModel(out))
}

/// A provider (which must be defined) and the upstream path that replaces the route prefix.
fn target(
    c: &mut Check<'_>,
    p: &str,
    provider: &str,
    prefix: &str,
    file: &ConfigFile,
) -> Option<Target> {
    if !file.providers.contains_key(provider) {
        let known: Vec<&str> = file.providers.keys().map(String::as_str).collect();
        c.err(
            &format!("{p}.provider"),
            format!(
                "unknown provider `{provider}` (defined: {})",
                known.join(", ")
            ),
        );
        return None;
    }
    let prefix = normalise_prefix(c, &format!("{p}.path_prefix"), prefix)?;
    Some(Target {
        provider: provider.to_string(),
        path_prefix: if prefix == "/" { String::new() } else { prefix },
    })
}
