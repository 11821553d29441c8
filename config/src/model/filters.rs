//! A route's filter chain as validated config: one `FilterConfig` per filter, its settings parsed
//! (JWT algorithms, durations, the JWKS source) so a filter builds from it without checking it again.
//! Built by `validate::filters` from `spec::FilterSpec`. A new filter's settings go here: a
//! `FilterConfig` variant (and a `*Config` struct when it has settings).
//!
//! These types serialize in the YAML's shape (`{"kind": "jwt", "jwks_file": ...}`): `/admin/config`
//! shows a route's filters as they were written, defaults filled in.

use crate::common::ConcurrencyScope;
use serde::{Serialize, Serializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One filter of a route's chain, in chain order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FilterConfig {
    /// Accept or mint `x-request-id`.
    RequestId(RequestIdConfig),
    /// Authenticate with an API key from the `keys` list.
    ApiKey(ApiKeyConfig),
    /// Authenticate with a JWT verified against a JWKS (boxed: much larger than the others).
    Jwt(Box<JwtConfig>),
    /// Enforce the principal's tier limits and the shared `limits` policies (no settings of its own).
    RateLimit,
    /// At most `max` requests in flight per `scope` value.
    Concurrency(ConcurrencyConfig),
}

impl FilterConfig {
    /// The YAML `kind` this filter is written as (also the filter's name in logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            FilterConfig::RequestId(_) => "request-id",
            FilterConfig::ApiKey(_) => "api-key",
            FilterConfig::Jwt(_) => "jwt",
            FilterConfig::RateLimit => "rate-limit",
            FilterConfig::Concurrency(_) => "concurrency",
        }
    }
}

/// `concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConcurrencyConfig {
    /// Most requests in flight at once for one `scope` value.
    pub max: std::num::NonZeroU32,
    pub scope: ConcurrencyScope,
}

/// `request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestIdConfig {
    /// Keep a well-formed incoming `x-request-id`; otherwise always mint one.
    pub trust_incoming: bool,
}

/// `api-key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApiKeyConfig {
    /// Pass requests that carry no API key (a later filter must authenticate them).
    pub optional: bool,
}

/// `jwt`: exactly one JWKS source, at least one accepted (asymmetric) algorithm, a known default tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub jwks: JwksSource,
    /// Accepted algorithms in the order written (repeats kept, as `/admin/config` shows them); never
    /// empty.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must match); empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// Shortest interval between two JWKS refreshes triggered by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// Claim names mapped onto the principal.
    pub claims: JwtClaims,
    /// Tier of tokens without a tier claim (a configured tier).
    pub default_tier: Option<String>,
    /// Pass requests that carry no bearer JWT (a later filter must authenticate them).
    pub optional: bool,
}

impl Serialize for JwtConfig {
    /// As the YAML spells it: `jwks_file` or `jwks_url`, algorithm names, durations in seconds.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Yaml<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            jwks_file: Option<&'a Path>,
            #[serde(skip_serializing_if = "Option::is_none")]
            jwks_url: Option<&'a str>,
            algorithms: Vec<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            issuer: Option<&'a str>,
            audiences: &'a [String],
            leeway_seconds: u64,
            min_refresh_interval_seconds: u64,
            claims: &'a JwtClaims,
            #[serde(skip_serializing_if = "Option::is_none")]
            default_tier: Option<&'a str>,
            optional: bool,
        }
        let (jwks_file, jwks_url) = match &self.jwks {
            JwksSource::File(f) => (Some(f.as_path()), None),
            JwksSource::Url(u) => (None, Some(u.as_str())),
        };
        Yaml {
            jwks_file,
            jwks_url,
            algorithms: self.algorithms.iter().map(|a| a.as_str()).collect(),
            issuer: self.issuer.as_deref(),
            audiences: &self.audiences,
            leeway_seconds: self.leeway.as_secs(),
            min_refresh_interval_seconds: self.min_refresh_interval.as_secs(),
            claims: &self.claims,
            default_tier: self.default_tier.as_deref(),
            optional: self.optional,
        }
        .serialize(s)
    }
}

/// Where a `jwt` filter's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS JSON file as written: relative paths are relative to `Config::base_dir`.
    File(PathBuf),
    /// A JWKS URL, fetched on first use and on an unknown `kid`.
    Url(String),
}

/// The claim names a `jwt` filter maps onto the principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtClaims {
    pub user: String,
    pub org: String,
    pub tier: String,
    pub roles: String,
    pub models: String,
}

impl Default for JwtClaims {
    /// The names the YAML defaults to (`claims:` omitted).
    fn default() -> Self {
        JwtClaims {
            user: "sub".into(),
            org: "org".into(),
            tier: "tier".into(),
            roles: "roles".into(),
            models: "models".into(),
        }
    }
}

/// A JWT signing algorithm the `jwt` filter accepts: asymmetric only, so a leaked verification key
/// cannot sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// JWT algorithms the `jwt` filter accepts, as written in YAML (the names of [`JwtAlgorithm`]).
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl JwtAlgorithm {
    /// Every accepted algorithm, in the order of [`JWT_ALGORITHMS`].
    pub const ALL: [JwtAlgorithm; 9] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The name as written in YAML and in a JWT header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// The algorithm named `name` (exact spelling), if it is accepted.
    pub fn parse(name: &str) -> Option<JwtAlgorithm> {
        JwtAlgorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip_and_match_the_published_list() {
        let names: Vec<&str> = JwtAlgorithm::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, JWT_ALGORITHMS);
        for a in JwtAlgorithm::ALL {
            assert_eq!(JwtAlgorithm::parse(a.as_str()), Some(a));
        }
        for refused in ["HS256", "none", "rs256", ""] {
            assert_eq!(JwtAlgorithm::parse(refused), None, "{refused}");
        }
    }

    #[test]
    fn kinds_are_the_yaml_names() {
        let kinds: Vec<&str> = [
            FilterConfig::RequestId(RequestIdConfig {
                trust_incoming: true,
            }),
            FilterConfig::ApiKey(ApiKeyConfig { optional: false }),
            FilterConfig::RateLimit,
        ]
        .iter()
        .map(FilterConfig::kind)
        .collect();
        assert_eq!(kinds, ["request-id", "api-key", "rate-limit"]);
    }
}
