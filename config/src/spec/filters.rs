//! A route's `filters:` as written, selected by `kind`. `validate::filters` checks them and turns them
//! into `model::filters` (the types the filter chain is built from). A new filter's YAML goes here: a
//! `FilterSpec` variant and its `*Spec` struct.

use crate::common::ConcurrencyScope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A filter of a route's chain, selected by `kind`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FilterSpec {
    /// Accept or mint `x-request-id`; propagate it upstream and return it.
    RequestId(RequestIdSpec),
    /// Authenticate with an API key from the `keys` list.
    ApiKey(ApiKeySpec),
    /// Authenticate with a JWT verified against a JWKS.
    Jwt(Box<JwtSpec>),
    /// Enforce the principal's tier limits and the shared policies of `limits` (reserve before the
    /// upstream call, settle with the provider's usage). Place it after authentication.
    RateLimit(RateLimitSpec),
    /// Cap the requests one caller has in flight on this route (`max` per `scope`); one more is
    /// refused with 429 until one of them ends. Place it after authentication.
    Concurrency(ConcurrencySpec),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// Most requests in flight at once for one `scope` value (at least 1).
    pub max: std::num::NonZeroU32,
    /// Whose requests share the cap: `key` (the authenticated principal, default), `user` or `org`
    /// (the principal's org, else its user). Unauthenticated requests share one cap.
    #[serde(default)]
    pub scope: ConcurrencyScope,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestIdSpec {
    /// Keep a well-formed incoming `x-request-id` (default true); otherwise always mint one.
    #[serde(default = "yes")]
    pub trust_incoming: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Pass requests that carry no API key (a later filter, e.g. `jwt`, must authenticate them).
    #[serde(default)]
    pub optional: bool,
}

/// JWT authentication. Only asymmetric algorithms are accepted.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// A JWKS JSON file (relative paths are relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched at load, cached, refreshed on an unknown `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Accepted algorithms: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA.
    pub algorithms: Vec<String>,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must match); empty = `aud` not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Shortest interval between two JWKS fetches triggered by unknown `kid`s, seconds.
    #[serde(default = "default_refresh")]
    pub min_refresh_interval_seconds: u64,
    /// Claim names mapped onto the principal.
    #[serde(default)]
    pub claims: JwtClaimsSpec,
    /// Tier of tokens without a tier claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    /// Pass requests that carry no bearer JWT (a later filter must authenticate them).
    #[serde(default)]
    pub optional: bool,
}

fn default_leeway() -> u64 {
    30
}

fn default_refresh() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtClaimsSpec {
    #[serde(default = "claim_sub")]
    pub user: String,
    #[serde(default = "claim_org")]
    pub org: String,
    #[serde(default = "claim_tier")]
    pub tier: String,
    #[serde(default = "claim_roles")]
    pub roles: String,
    #[serde(default = "claim_models")]
    pub models: String,
}

impl Default for JwtClaimsSpec {
    fn default() -> Self {
        JwtClaimsSpec {
            user: claim_sub(),
            org: claim_org(),
            tier: claim_tier(),
            roles: claim_roles(),
            models: claim_models(),
        }
    }
}

fn claim_sub() -> String {
    "sub".into()
}

fn claim_org() -> String {
    "org".into()
}

fn claim_tier() -> String {
    "tier".into()
}

fn claim_roles() -> String {
    "roles".into()
}

fn claim_models() -> String {
    "models".into()
}
