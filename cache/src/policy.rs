//! Whether a request is answered from (and stored in) the cache: a route's `cache:` compiled once
//! per config version into a [`CachePolicy`], asked once per request with the [`RequestFacts`] the
//! proxy has after admission.
//!
//! The rules, first match wins:
//!
//! 1. only `POST` is cached (`method`);
//! 2. the route may limit caching to some tiers (`tier`);
//! 3. the caller opts out with `x-leaky-cache: bypass` (or `off`) (`opt_out`) or with
//!    `Cache-Control: no-store` (`no_store`): neither read nor stored. `Cache-Control: no-cache`
//!    refreshes: the cache is not read, the fresh answer is stored;
//! 4. a request without a principal (a route without auth) has no tenant to scope to (`no_tenant`);
//! 5. the body must be a JSON object (`not_json`);
//! 6. sampling randomness, per the route's `temperature` (`randomness`): `never` caches only greedy
//!    requests (`temperature` 0, or `top_p` 0, or `top_k` 1; an absent temperature is the
//!    providers' default of 1), `seeded` also those that name a `seed`, `always` any. Endpoints
//!    without sampling (embeddings, `:embedContent`, `:batchEmbedContents`, `:countTokens`) are
//!    deterministic and cached under every setting. Where the parameters are: OpenAI-style bodies at
//!    the top level (`n` does not matter: greedy choices are all alike); Gemini native in
//!    `generationConfig`; DashScope native in `parameters`.
//!
//! Then the request's [`Key`] is computed ([`crate::key`]). `too_large` is not decided here: the
//! proxy reports it when an answer outgrows `max_entry_bytes` (served, not stored).

use crate::key::{request_key, KeyParts, Tenant};
use crate::Key;
use http::header::{HeaderMap, CACHE_CONTROL};
use http::Method;
use leaky_config::{CacheTemperature, Dialect, RouteCache};
use serde_json::Value;

/// The caller's per-request opt-out header (`bypass` or `off`); the proxy answers with the same
/// header (`hit`, `miss` or `bypass`).
pub const OPT_OUT_HEADER: &str = "x-leaky-cache";

/// Why a request skipped the cache: a bounded label for metrics and the access log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BypassReason {
    Method,
    Tier,
    OptOut,
    NoStore,
    NoTenant,
    NotJson,
    Randomness,
    /// The answer was larger than `max_entry_bytes` (reported by the proxy, after the answer).
    TooLarge,
}

impl BypassReason {
    /// Every reason, e.g. to register metric series up front.
    pub const ALL: [BypassReason; 8] = [
        BypassReason::Method,
        BypassReason::Tier,
        BypassReason::OptOut,
        BypassReason::NoStore,
        BypassReason::NoTenant,
        BypassReason::NotJson,
        BypassReason::Randomness,
        BypassReason::TooLarge,
    ];

    /// The metric label: `method`, `tier`, `opt_out`, `no_store`, `no_tenant`, `not_json`,
    /// `randomness`, `too_large`.
    pub fn label(self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::Tier => "tier",
            BypassReason::OptOut => "opt_out",
            BypassReason::NoStore => "no_store",
            BypassReason::NoTenant => "no_tenant",
            BypassReason::NotJson => "not_json",
            BypassReason::Randomness => "randomness",
            BypassReason::TooLarge => "too_large",
        }
    }
}

/// What to do with one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Neither look up nor store.
    Bypass(BypassReason),
    /// Look up `key` when `read`; store a complete answer under it when `store`.
    Cache { key: Key, read: bool, store: bool },
}

/// What the proxy knows about a request after admission, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// The route's name (part of the key: two routes never share entries).
    pub route: &'a str,
    pub dialect: Dialect,
    pub method: &'a Method,
    /// The path after the route prefix, normalized.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The body as the caller sent it.
    pub body: &'a [u8],
    pub org: Option<&'a str>,
    /// The API key id (or the JWT's id).
    pub key_id: Option<&'a str>,
    pub user: Option<&'a str>,
    pub tier: Option<&'a str>,
    /// The model the request is routed by.
    pub model: Option<&'a str>,
}

/// A route's cache policy, built once per config version.
#[derive(Clone, Debug)]
pub struct CachePolicy {
    config: RouteCache,
}

impl CachePolicy {
    pub fn from_config(config: &RouteCache) -> Self {
        CachePolicy {
            config: config.clone(),
        }
    }

    /// The route's settings (store, ttl, max_entry_bytes, charge, wait).
    pub fn config(&self) -> &RouteCache {
        &self.config
    }

    /// The decision for one request: header checks first, then one parse of the body; the key's
    /// canonical form is streamed into the hasher, never built as a string.
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Decision {
        let (read, tenant) = match self.admit(facts) {
            Ok(admitted) => admitted,
            Err(reason) => return Decision::Bypass(reason),
        };
        match serde_json::from_slice::<Value>(facts.body) {
            Ok(body) => self.decide_json(facts, tenant, read, &body),
            Err(_) => Decision::Bypass(BypassReason::NotJson),
        }
    }

    /// [`decide`](Self::decide) for a proxy that already holds the parsed body (`body` must be
    /// `facts.body` parsed): saves the second parse.
    pub fn decide_parsed(&self, facts: &RequestFacts<'_>, body: &Value) -> Decision {
        match self.admit(facts) {
            Ok((read, tenant)) => self.decide_json(facts, tenant, read, body),
            Err(reason) => Decision::Bypass(reason),
        }
    }

    /// Rules 1–4: whether to read, and the tenant.
    fn admit<'a>(&self, facts: &RequestFacts<'a>) -> Result<(bool, Tenant<'a>), BypassReason> {
        if facts.method != Method::POST {
            return Err(BypassReason::Method);
        }
        // A route names a handful of tiers at most: comparing them beats hashing.
        let tiers = &self.config.tiers;
        if !tiers.is_empty() && !facts.tier.is_some_and(|t| tiers.iter().any(|x| x == t)) {
            return Err(BypassReason::Tier);
        }
        if opted_out(facts.headers) {
            return Err(BypassReason::OptOut);
        }
        let read = match cache_control(facts.headers) {
            CacheControl::NoStore => return Err(BypassReason::NoStore),
            CacheControl::NoCache => false,
            CacheControl::Normal => true,
        };
        let tenant = Tenant::resolve(self.config.scope, facts.org, facts.key_id, facts.user)
            .ok_or(BypassReason::NoTenant)?;
        Ok((read, tenant))
    }

    /// Rules 5–6 and the key.
    fn decide_json(
        &self,
        facts: &RequestFacts<'_>,
        tenant: Tenant<'_>,
        read: bool,
        body: &Value,
    ) -> Decision {
        if !body.is_object() {
            return Decision::Bypass(BypassReason::NotJson);
        }
        if !deterministic_endpoint(facts.path)
            && !sampling_allowed(self.config.temperature, facts.dialect, body)
        {
            return Decision::Bypass(BypassReason::Randomness);
        }
        let key = request_key(&KeyParts {
            tenant,
            route: facts.route,
            method: facts.method.as_str(),
            path: facts.path,
            query: facts.query,
            model: facts.model,
            headers: facts.headers,
            body,
        });
        Decision::Cache {
            key,
            read,
            store: true,
        }
    }
}

/// `x-leaky-cache: bypass` or `off`, in any case.
fn opted_out(headers: &HeaderMap) -> bool {
    headers.get_all(OPT_OUT_HEADER).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("bypass") || v.eq_ignore_ascii_case("off")
        })
    })
}

#[derive(PartialEq, Eq, Debug)]
enum CacheControl {
    Normal,
    NoCache,
    NoStore,
}

/// The caller's `Cache-Control` directives that matter here (`no-store` wins over `no-cache`), over
/// every `Cache-Control` line.
fn cache_control(headers: &HeaderMap) -> CacheControl {
    let mut out = CacheControl::Normal;
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split_once('=').map_or(d, |(name, _)| name).trim());
    for d in directives {
        if d.eq_ignore_ascii_case("no-store") {
            return CacheControl::NoStore;
        }
        if d.eq_ignore_ascii_case("no-cache") {
            out = CacheControl::NoCache;
        }
    }
    out
}

/// Endpoints whose answer does not depend on sampling: embeddings and token counts.
fn deterministic_endpoint(path: &str) -> bool {
    const SUFFIXES: [&str; 4] = [
        ":embedContent",
        ":batchEmbedContents",
        ":countTokens",
        "/embeddings",
    ];
    SUFFIXES.iter().any(|s| path.ends_with(s))
        || path.contains("/services/embeddings/")
        || path == "embeddings"
}

/// Whether the route's `temperature` setting admits this body's sampling.
fn sampling_allowed(setting: CacheTemperature, dialect: Dialect, body: &Value) -> bool {
    match setting {
        CacheTemperature::Always => true,
        CacheTemperature::Seeded => {
            let s = Sampling::of(dialect, body);
            s.greedy() || s.seeded
        }
        CacheTemperature::Never => Sampling::of(dialect, body).greedy(),
    }
}

/// The sampling parameters of a body, wherever its dialect keeps them.
#[derive(Debug, Default, PartialEq)]
struct Sampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    seeded: bool,
}

impl Sampling {
    fn of(dialect: Dialect, body: &Value) -> Sampling {
        // Gemini's REST API accepts the proto field names in camelCase and snake_case alike.
        let (params, names): (Option<&Value>, [&[&str]; 4]) = match dialect {
            Dialect::Openai => (Some(body), OPENAI_NAMES),
            Dialect::Google => (
                body.get("generationConfig")
                    .or_else(|| body.get("generation_config")),
                GOOGLE_NAMES,
            ),
            Dialect::Dashscope => (body.get("parameters"), OPENAI_NAMES),
        };
        let Some(params) = params else {
            return Sampling::default();
        };
        let number = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| params.get(*n).and_then(Value::as_f64))
        };
        Sampling {
            temperature: number(names[0]),
            top_p: number(names[1]),
            top_k: number(names[2]),
            seeded: number(names[3]).is_some(),
        }
    }

    /// Sampling without randomness: temperature 0 (absent means the default, 1), nucleus 0 or a
    /// single candidate.
    fn greedy(&self) -> bool {
        self.temperature == Some(0.0) || self.top_p == Some(0.0) || self.top_k == Some(1.0)
    }
}

/// `[temperature, top_p, top_k, seed]` names, OpenAI-style (OpenAI, DashScope `parameters`).
const OPENAI_NAMES: [&[&str]; 4] = [&["temperature"], &["top_p"], &["top_k"], &["seed"]];
/// The same in Gemini's `generationConfig`.
const GOOGLE_NAMES: [&[&str]; 4] = [
    &["temperature"],
    &["topP", "top_p"],
    &["topK", "top_k"],
    &["seed"],
];

#[cfg(test)]
mod tests;
