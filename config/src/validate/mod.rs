//! Schema → model: every rule that serde's types cannot express. Each rule has one invalid fixture in
//! `config/tests/invalid/` asserting its exact message.

use crate::interpolate::interpolate;
use crate::load::{ConfigError, ConfigErrors, Sources};
use crate::model::*;
use crate::schema::Dialect;
use crate::schema::{
    ConfigFile, FilterSpec, JwtSpec, ModelSource, ProviderSpec, RouteSpec, UpstreamSpec,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// JWT algorithms the `jwt` filter accepts: asymmetric only, so a leaked verification key cannot sign.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(crate) struct Check<'a> {
    sources: &'a Sources,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push(self.sources.error_at(path, msg));
    }

    pub(crate) fn interpolated(&mut self, path: &str, s: &str) -> Option<String> {
        match interpolate(s, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("`{s}` is not a socket address (write IP:PORT, e.g. 127.0.0.1:8080)"),
                );
                None
            }
        }
    }
}

/// Pingora refuses a request head past this many bytes whatever the gateway's own limit is.
pub const MAX_HEADER_BYTES_CEILING: usize = 1_048_575;

/// The listeners' connection settings (`server.header_timeout_ms` …).
fn connection_limits(c: &mut Check<'_>, s: &crate::schema::ServerSpec) {
    let positive = [
        ("header_timeout_ms", s.header_timeout_ms),
        ("keepalive_timeout_ms", s.keepalive_timeout_ms),
        ("max_connections", s.max_connections as u64),
        ("admin_max_connections", s.admin_max_connections as u64),
    ];
    for (field, value) in positive {
        if value == 0 {
            c.err(
                &format!("server.{field}"),
                format!("`{field}` must be at least 1"),
            );
        }
    }
    if !(1024..=MAX_HEADER_BYTES_CEILING).contains(&s.max_header_bytes) {
        c.err(
            "server.max_header_bytes",
            format!(
                "`max_header_bytes` must be between 1024 and {MAX_HEADER_BYTES_CEILING}, not {}",
                s.max_header_bytes
            ),
        );
    }
}

pub(crate) fn validate(
    file: ConfigFile,
    sources: &Sources,
    env: &dyn Fn(&str) -> Option<String>,
    files: Vec<PathBuf>,
    base_dir: PathBuf,
    hash: String,
) -> Result<Config, ConfigErrors> {
    let mut c = Check {
        sources,
        env,
        errors: Vec::new(),
    };
    let s = &file.server;
    let listen = c.addr("server.listen", &s.listen);
    let admin_listen = c.addr("server.admin_listen", &s.admin_listen);
    let admin_token = admin_token(&mut c, s.admin_token.as_deref());
    if let (Some(addr), Some(token)) = (admin_listen, &admin_token) {
        if let Some(msg) = admin_exposure_error(addr, token.is_some()) {
            c.err("server.admin_listen", msg);
        }
    }
    if s.threads == 0 {
        c.err("server.threads", "`threads` must be at least 1");
    }
    if s.max_body_bytes == 0 {
        c.err(
            "server.max_body_bytes",
            "`max_body_bytes` must be at least 1",
        );
    }
    connection_limits(&mut c, s);

    let trusted_proxies = crate::forwarding::trusted_proxies(&mut c, &s.trusted_proxies);

    let mut providers = BTreeMap::new();
    for (name, p) in &file.providers {
        if let Some(p) = provider(&mut c, name, p) {
            providers.insert(name.clone(), p);
        }
    }
    let tiers: BTreeMap<String, Tier> = file
        .tiers
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                Tier {
                    name: n.clone(),
                    priority: t.priority,
                },
            )
        })
        .collect();

    let mut routes = Vec::new();
    let mut names = HashSet::new();
    let mut prefixes = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(r.name.as_str()) {
            c.err(
                &format!("{path}.name"),
                format!("duplicate route name `{}`", r.name),
            );
        }
        if let Some(route) = route(&mut c, &path, r, &file, &tiers) {
            if let Some(other) = prefixes.insert(route.prefix.clone(), r.name.clone()) {
                c.err(
                    &format!("{path}.prefix"),
                    format!(
                        "prefix `{}` is already used by route `{other}`",
                        route.prefix
                    ),
                );
            }
            routes.push(route);
        }
    }

    let keys = keys(&mut c, &file, &tiers);
    let limits = crate::validate_limits::limits(&mut c, &file);

    if c.errors.is_empty() {
        if let (Some(listen), Some(admin_listen)) = (listen, admin_listen) {
            let server = Server {
                listen,
                admin_listen,
                admin_token: admin_token.flatten(),
                threads: s.threads,
                max_body_bytes: s.max_body_bytes,
                grace_period_seconds: s.grace_period_seconds,
                trusted_proxies,
                header_timeout: Duration::from_millis(s.header_timeout_ms),
                keepalive_timeout: Duration::from_millis(s.keepalive_timeout_ms),
                max_header_bytes: s.max_header_bytes,
                max_connections: s.max_connections,
                admin_max_connections: s.admin_max_connections,
            };
            return Ok(Config {
                server,
                providers,
                routes,
                tiers,
                keys,
                limits,
                files,
                base_dir,
                hash,
            });
        }
    }
    c.errors.sort_by(|a, b| {
        (&a.file, a.pos.map(|p| (p.line, p.col))).cmp(&(&b.file, b.pos.map(|p| (p.line, p.col))))
    });
    Err(ConfigErrors(c.errors))
}

/// `server.admin_token`: `Some(None)` when unset or empty, `None` when it is in error.
fn admin_token(c: &mut Check<'_>, spec: Option<&str>) -> Option<Option<AdminToken>> {
    let Some(spec) = spec else {
        return Some(None);
    };
    let token = c.interpolated("server.admin_token", spec)?;
    if token.is_empty() {
        return Some(None);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        c.err(
            "server.admin_token",
            "`admin_token` must be visible ASCII without spaces (it is sent as `Authorization: Bearer <token>`)",
        );
        return None;
    }
    Some(Some(AdminToken::new(&token)))
}

fn provider(c: &mut Check<'_>, name: &str, p: &ProviderSpec) -> Option<Provider> {
    use crate::validate_resilience as res;
    let path = format!("providers.{name}");
    let errors = c.error_count();
    let credential = match &p.credential {
        Some(cred) => Some(Secret::new(
            c.interpolated(&format!("{path}.credential"), cred)?,
        )),
        None => None,
    };
    let main = match &p.base_url {
        Some(url) => Some(res::base_url(c, &format!("{path}.base_url"), url)?),
        None if p.deployments.is_empty() => {
            c.err(
                &path,
                "a provider needs a `base_url` or a non-empty `deployments` list",
            );
            return None;
        }
        None => None,
    };
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
    let account = |c: &mut Check<'_>, field: &str, v: Option<&String>| {
        crate::forwarding::account_value(c, &path, field, v)
    };
    let organization = account(c, "organization", p.organization.as_ref());
    let project = account(c, "project", p.project.as_ref());
    let workspace = account(c, "workspace", p.workspace.as_ref());
    let forward_headers = crate::forwarding::forward_headers(
        c,
        &format!("{path}.forward_headers"),
        &p.forward_headers,
    );
    let deployments = deployments?;
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
    })
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

fn route(
    c: &mut Check<'_>,
    path: &str,
    r: &RouteSpec,
    file: &ConfigFile,
    tiers: &BTreeMap<String, Tier>,
) -> Option<Route> {
    let prefix = normalise_prefix(c, &format!("{path}.prefix"), &r.prefix);
    let upstream = upstream(c, &format!("{path}.upstream"), &r.upstream, file);
    for (j, f) in r.filters.iter().enumerate() {
        if let FilterSpec::Jwt(j_spec) = f {
            jwt(c, &format!("{path}.filters[{j}]"), j_spec, tiers);
        }
    }
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
    let endpoints = crate::validate_endpoints::endpoints(
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
        filters: r.filters.clone(),
        timeouts: crate::resilience::Timeouts {
            connect: None,
            first_byte: None,
            idle: None,
            total: Duration::from_secs(600),
        },
        retry: Default::default(),
        fallbacks: Vec::new(),
        tenant_bulkhead: None,
        forward_headers: crate::forwarding::forward_headers(
            c,
            &format!("{path}.forward_headers"),
            &r.forward_headers,
        ),
        endpoints: endpoints?,
    };
    crate::validate_resilience::route(c, path, r, &mut route);
    Some(route)
}

fn upstream(
    c: &mut Check<'_>,
    path: &str,
    u: &UpstreamSpec,
    file: &ConfigFile,
) -> Option<RouteUpstream> {
    let target = |c: &mut Check<'_>, p: &str, provider: &str, prefix: &str| -> Option<Target> {
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
    };
    match (&u.provider, &u.by_model) {
        (Some(p), None) => {
            target(c, path, p, u.path_prefix.as_deref().unwrap_or("/")).map(RouteUpstream::Fixed)
        }
        (None, Some(list)) if !list.is_empty() => {
            if u.path_prefix.is_some() {
                c.err(
                    &format!("{path}.path_prefix"),
                    "`path_prefix` belongs inside each `by_model` entry",
                );
                return None;
            }
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let p = format!("{path}.by_model[{i}]");
                if m.models.is_empty() {
                    c.err(
                        &format!("{p}.models"),
                        "`models` must list at least one model or pattern",
                    );
                }
                let t = target(c, &p, &m.provider, &m.path_prefix);
                if let Some(t) = t {
                    out.push(ModelTarget {
                        models: m.models.iter().map(|s| ModelPattern::parse(s)).collect(),
                        target: t,
                    });
                }
            }
            (out.len() == list.len()).then_some(RouteUpstream::ByModel(out))
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

fn jwt(c: &mut Check<'_>, path: &str, j: &JwtSpec, tiers: &BTreeMap<String, Tier>) {
    if j.jwks_file.is_some() == j.jwks_url.is_some() {
        // Both: point at the second source; neither: at the filter mapping that lacks them.
        let at = if j.jwks_url.is_some() {
            format!("{path}.jwks_url")
        } else {
            path.to_string()
        };
        c.err(&at, "`jwt` needs exactly one of `jwks_file` or `jwks_url`");
    }
    if j.algorithms.is_empty() {
        c.err(
            &format!("{path}.algorithms"),
            "`algorithms` must list at least one algorithm",
        );
    }
    for (i, a) in j.algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            c.err(
                &format!("{path}.algorithms[{i}]"),
                format!(
                    "unsupported JWT algorithm `{a}` (accepted: {})",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    if let Some(t) = &j.default_tier {
        if !tiers.contains_key(t) {
            c.err(
                &format!("{path}.default_tier"),
                format!("unknown tier `{t}`"),
            );
        }
    }
}

fn keys(c: &mut Check<'_>, file: &ConfigFile, tiers: &BTreeMap<String, Tier>) -> Vec<ApiKey> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let mut hashes = HashMap::new();
    for (i, k) in file.keys.iter().enumerate() {
        let path = format!("keys[{i}]");
        if !ids.insert(k.id.as_str()) {
            c.err(
                &format!("{path}.id"),
                format!("duplicate key id `{}`", k.id),
            );
        }
        if !tiers.contains_key(&k.tier) {
            let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
            c.err(
                &format!("{path}.tier"),
                format!("unknown tier `{}` (defined: {})", k.tier, known.join(", ")),
            );
        }
        let mut sha = [0u8; 32];
        if k.sha256.len() != 64 || hex::decode_to_slice(&k.sha256, &mut sha).is_err() {
            c.err(
                &format!("{path}.sha256"),
                "`sha256` must be 64 hex digits (printf %s KEY | sha256sum)",
            );
            continue;
        }
        if let Some(other) = hashes.insert(sha, k.id.clone()) {
            c.err(
                &format!("{path}.sha256"),
                format!("the same key hash is already used by key `{other}`"),
            );
        }
        let expires_at = match &k.expires_at {
            None => None,
            Some(s) => {
                match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                {
                    Ok(t) => Some(t.unix_timestamp()),
                    Err(_) => {
                        c.err(
                            &format!("{path}.expires_at"),
                            format!(
                                "`{s}` is not an RFC 3339 timestamp (e.g. 2027-01-31T00:00:00Z)"
                            ),
                        );
                        continue;
                    }
                }
            }
        };
        out.push(ApiKey {
            id: k.id.clone(),
            sha256: sha,
            user: k.user.clone(),
            org: k.org.clone(),
            tier: k.tier.clone(),
            roles: k.roles.clone(),
            models: k.models.iter().map(|s| ModelPattern::parse(s)).collect(),
            expires_at,
        });
    }
    out
}
