//! Validation of a route's `endpoints` (`spec::EndpointsSpec` → `model::endpoints`): path patterns parse, tiers exist, and the route
//! serves something. The dialect's defaults come first in the result. Each rule has an invalid fixture
//! in `config/tests/invalid/`.

use crate::model::endpoints::{default_endpoints, Endpoint, PathPattern};
use crate::model::{Dialect, Tier};
use crate::spec::EndpointsSpec;
use crate::validate::Check;
use std::collections::BTreeMap;

/// The route's effective allow-list: the dialect's defaults (unless `defaults: false`), then `allow`.
pub(crate) fn endpoints(
    c: &mut Check<'_>,
    path: &str,
    spec: &EndpointsSpec,
    dialect: Dialect,
    tiers: &BTreeMap<String, Tier>,
) -> Option<Vec<Endpoint>> {
    let errors = c.error_count();
    let mut out = Vec::new();
    if spec.defaults {
        for (method, p) in default_endpoints(dialect) {
            match PathPattern::parse(p) {
                Ok(pattern) => out.push(Endpoint {
                    method: *method,
                    path: pattern,
                    roles: Vec::new(),
                    tiers: Vec::new(),
                }),
                Err(e) => c.err(path, format!("built-in endpoint: {e}")),
            }
        }
    } else if spec.allow.is_empty() {
        c.err(
            &format!("{path}.defaults"),
            "with `defaults: false`, `allow` must list at least one endpoint (the route would serve nothing)",
        );
    }
    for (i, e) in spec.allow.iter().enumerate() {
        let at = format!("{path}.allow[{i}]");
        for (j, t) in e.tiers.iter().enumerate() {
            if !tiers.contains_key(t) {
                let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
                c.err(
                    &format!("{at}.tiers[{j}]"),
                    format!("unknown tier `{t}` (defined: {})", known.join(", ")),
                );
            }
        }
        match PathPattern::parse(&e.path) {
            Ok(p) => out.push(Endpoint {
                method: e.method,
                path: p,
                roles: e.roles.clone(),
                tiers: e.tiers.clone(),
            }),
            Err(err) => c.err(&format!("{at}.path"), err.to_string()),
        }
    }
    (c.error_count() == errors).then_some(out)
}
