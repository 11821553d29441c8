//! Spec → model: every rule that serde's types cannot express, and the only layer that knows both
//! `spec` and `model`. Each rule has one invalid fixture in `config/tests/invalid/` asserting its exact
//! message. Errors are collected, not returned at the first: one load reports every problem.
//!
//! - `mod.rs`: the entry point, `server`, tiers, keys;
//! - `routes`: providers and routes (prefix, upstream);
//! - `filters`: a route's filter chain (`FilterSpec` → `FilterConfig`);
//! - `limits`, `resilience`, `endpoints`, `forwarding`, `flags`, `events`, `cache`, `tls`: the rules of
//!   those sections.

mod cache;
mod endpoints;
mod events;
mod filters;
mod flags;
mod forwarding;
mod limits;
mod resilience;
mod routes;
mod tls;

use crate::error::{ConfigError, ConfigErrors, Sources};
use crate::interpolate::interpolate;
use crate::model::{
    admin_exposure_error, AdminToken, ApiKey, Config, ModelPattern, Route, Server, Tier,
};
use crate::spec::{ConfigFile, ServerSpec};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
                self.err(path, e.to_string());
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
fn connection_limits(c: &mut Check<'_>, s: &ServerSpec) {
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

/// The model of `file`, or every problem found in it, sorted by file and position.
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
    let server = server(&mut c, &file.server, &base_dir);
    let mut providers = BTreeMap::new();
    for (name, p) in &file.providers {
        if let Some(p) = routes::provider(&mut c, name, p, &base_dir) {
            providers.insert(name.clone(), p);
        }
    }
    let tiers = tiers(&file);
    let routes = all_routes(&mut c, &file, &tiers);
    let keys = keys(&mut c, &file, &tiers);
    let limits = limits::limits(&mut c, &file);
    let flags = flags::flags(&mut c, &file.flags);
    let events = events::events(&mut c, &file.events, &base_dir);
    let cache = cache::cache(&mut c, &file.cache);
    match server {
        Some(server) if c.errors.is_empty() => Ok(Config {
            server,
            providers,
            routes,
            tiers,
            keys,
            limits,
            flags,
            events,
            cache,
            files,
            base_dir,
            hash,
        }),
        _ => {
            c.errors.sort_by(|a, b| {
                (&a.file, a.pos.map(|p| (p.line, p.col)))
                    .cmp(&(&b.file, b.pos.map(|p| (p.line, p.col))))
            });
            Err(ConfigErrors(c.errors))
        }
    }
}

/// `server:`; `None` when an address does not parse (its error is recorded).
fn server(c: &mut Check<'_>, s: &ServerSpec, base_dir: &std::path::Path) -> Option<Server> {
    let listen = c.addr("server.listen", &s.listen);
    let admin_listen = c.addr("server.admin_listen", &s.admin_listen);
    let admin_token = admin_token(c, s.admin_token.as_deref());
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
    connection_limits(c, s);
    let trusted_proxies = forwarding::trusted_proxies(c, &s.trusted_proxies);
    let tls = tls::listener(c, "server.tls", s.tls.as_ref(), base_dir);
    let admin_tls = tls::listener(c, "server.admin_tls", s.admin_tls.as_ref(), base_dir);
    Some(Server {
        listen: listen?,
        admin_listen: admin_listen?,
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
        tls,
        admin_tls,
    })
}

fn tiers(file: &ConfigFile) -> BTreeMap<String, Tier> {
    file.tiers
        .iter()
        .map(|(n, t)| {
            let tier = Tier {
                name: n.clone(),
                priority: t.priority,
            };
            (n.clone(), tier)
        })
        .collect()
}

/// Every route that validates, with unique names and prefixes.
fn all_routes(c: &mut Check<'_>, file: &ConfigFile, tiers: &BTreeMap<String, Tier>) -> Vec<Route> {
    let mut out = Vec::new();
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
        if let Some(route) = routes::route(c, &path, r, file, tiers) {
            if let Some(other) = prefixes.insert(route.prefix.clone(), r.name.clone()) {
                c.err(
                    &format!("{path}.prefix"),
                    format!(
                        "prefix `{}` is already used by route `{other}`",
                        route.prefix
                    ),
                );
            }
            out.push(route);
        }
    }
    out
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
        let Some(expires_at) = expires_at(c, &path, k.expires_at.as_deref()) else {
            continue;
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

/// A key's `expires_at` as unix seconds: `Some(None)` when unset, `None` when it is in error.
fn expires_at(c: &mut Check<'_>, path: &str, s: Option<&str>) -> Option<Option<i64>> {
    let Some(s) = s else {
        return Some(None);
    };
    match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Some(Some(t.unix_timestamp())),
        Err(_) => {
            c.err(
                &format!("{path}.expires_at"),
                format!("`{s}` is not an RFC 3339 timestamp (e.g. 2027-01-31T00:00:00Z)"),
            );
            None
        }
    }
}
