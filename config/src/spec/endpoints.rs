//! A route's `endpoints:` as written: keep the dialect's defaults or not, and what else is allowed.
//! `validate::endpoints` turns it into the model's allow-list (`model::endpoints`).

use crate::common::EndpointMethod;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The endpoints a route forwards. Anything else gets 404 in the route's dialect and never reaches
/// the provider (whose credential the gateway adds).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointsSpec {
    /// Keep the dialect's inference and model-listing endpoints (default true). `false` allows only
    /// what `allow` lists.
    #[serde(default = "yes")]
    pub defaults: bool,
    /// Endpoints allowed in addition to (or, with `defaults: false`, instead of) the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<EndpointSpec>,
}

impl Default for EndpointsSpec {
    fn default() -> Self {
        EndpointsSpec {
            defaults: true,
            allow: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// One allowed endpoint: a method and a path pattern relative to the route prefix, optionally only
/// for some principals.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// HTTP method, or `*` for any.
    pub method: EndpointMethod,
    /// Path pattern relative to the route prefix: literal segments, `{name}` (one segment),
    /// `{name}:verb` (Gemini-style `models/{model}:generateContent`), and a final `**` (any rest).
    pub path: String,
    /// Only principals holding one of these roles (key `roles`, JWT `roles` claim); empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Only principals of one of these tiers; empty: any tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
}
