//! A route's filter chain: each `FilterSpec` checked and turned into its `FilterConfig`, so filters build
//! from parsed settings (JWT algorithms, durations) and never check them again. A new filter's rules go
//! here: an arm in `filter` (and a function when it has settings). Each rule has an invalid fixture in
//! `config/tests/invalid/` (`jwt-*.yaml`).

use crate::model::{
    ApiKeyConfig, ConcurrencyConfig, FilterConfig, JwksSource, JwtAlgorithm, JwtClaims, JwtConfig,
    RequestIdConfig, Tier, JWT_ALGORITHMS,
};
use crate::spec::{FilterSpec, JwtSpec};
use crate::validate::Check;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The route's chain at `path` (`routes[i]`). An invalid filter is reported and left out (the load
/// fails anyway); the route itself is still built so its other rules are checked too.
pub(crate) fn filters(
    c: &mut Check<'_>,
    path: &str,
    specs: &[FilterSpec],
    tiers: &BTreeMap<String, Tier>,
) -> Vec<FilterConfig> {
    let mut out = Vec::with_capacity(specs.len());
    for (j, spec) in specs.iter().enumerate() {
        let at = format!("{path}.filters[{j}]");
        let filter = match spec {
            FilterSpec::RequestId(s) => Some(FilterConfig::RequestId(RequestIdConfig {
                trust_incoming: s.trust_incoming,
            })),
            FilterSpec::ApiKey(s) => Some(FilterConfig::ApiKey(ApiKeyConfig {
                optional: s.optional,
            })),
            FilterSpec::Jwt(s) => jwt(c, &at, s, tiers).map(|j| FilterConfig::Jwt(Box::new(j))),
            FilterSpec::RateLimit(_) => Some(FilterConfig::RateLimit),
            FilterSpec::Concurrency(s) => Some(FilterConfig::Concurrency(ConcurrencyConfig {
                max: s.max,
                scope: s.scope,
            })),
        };
        out.extend(filter);
    }
    out
}

fn jwt(
    c: &mut Check<'_>,
    path: &str,
    j: &JwtSpec,
    tiers: &BTreeMap<String, Tier>,
) -> Option<JwtConfig> {
    let errors = c.error_count();
    let jwks = match (&j.jwks_file, &j.jwks_url) {
        (Some(file), None) => Some(JwksSource::File(PathBuf::from(file))),
        (None, Some(url)) => Some(JwksSource::Url(url.clone())),
        (_, url) => {
            // Both: point at the second source; neither: at the filter mapping that lacks them.
            let at = match url {
                Some(_) => format!("{path}.jwks_url"),
                None => path.to_string(),
            };
            c.err(&at, "`jwt` needs exactly one of `jwks_file` or `jwks_url`");
            None
        }
    };
    let algorithms = algorithms(c, path, &j.algorithms);
    if let Some(t) = &j.default_tier {
        if !tiers.contains_key(t) {
            c.err(
                &format!("{path}.default_tier"),
                format!("unknown tier `{t}`"),
            );
        }
    }
    if c.error_count() != errors {
        return None;
    }
    Some(JwtConfig {
        jwks: jwks?,
        algorithms,
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        leeway: Duration::from_secs(j.leeway_seconds),
        min_refresh_interval: Duration::from_secs(j.min_refresh_interval_seconds),
        claims: JwtClaims {
            user: j.claims.user.clone(),
            org: j.claims.org.clone(),
            tier: j.claims.tier.clone(),
            roles: j.claims.roles.clone(),
            models: j.claims.models.clone(),
        },
        default_tier: j.default_tier.clone(),
        optional: j.optional,
    })
}

/// `algorithms`: at least one, each accepted. Kept as written, repeats included, so `/admin/config`
/// shows the list the file has.
fn algorithms(c: &mut Check<'_>, path: &str, names: &[String]) -> Vec<JwtAlgorithm> {
    if names.is_empty() {
        c.err(
            &format!("{path}.algorithms"),
            "`algorithms` must list at least one algorithm",
        );
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, a) in names.iter().enumerate() {
        match JwtAlgorithm::parse(a) {
            Some(alg) => out.push(alg),
            None => c.err(
                &format!("{path}.algorithms[{i}]"),
                format!(
                    "unsupported JWT algorithm `{a}` (accepted: {})",
                    JWT_ALGORITHMS.join(", ")
                ),
            ),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::error::Sources;
    use crate::model::Priority;
    use serde_json::{json, Value};

    /// `filters` of `routes[0]` (written as JSON) validated with one tier `pro`: the model and the
    /// error messages.
    fn validated(filters: &Value) -> (Vec<FilterConfig>, Vec<String>) {
        let specs: Vec<FilterSpec> = serde_json::from_value(filters.clone()).unwrap();
        let sources = Sources { files: Vec::new() };
        let env = |_: &str| None;
        let mut c = Check {
            sources: &sources,
            env: &env,
            errors: Vec::new(),
        };
        let pro = Tier {
            name: "pro".into(),
            priority: Priority::Normal,
        };
        let tiers = BTreeMap::from([("pro".to_string(), pro)]);
        let out = super::filters(&mut c, "routes[0]", &specs, &tiers);
        (out, c.errors.into_iter().map(|e| e.message).collect())
    }

    #[test]
    fn jwt_settings_are_parsed_once() {
        let (model, errors) = validated(&json!([{
            "kind": "jwt", "jwks_file": "keys/jwks.json", "algorithms": ["ES256", "EdDSA"],
            "leeway_seconds": 5, "claims": {"tier": "plan"}, "default_tier": "pro",
        }]));
        assert_eq!(errors, Vec::<String>::new());
        let [FilterConfig::Jwt(j)] = model.as_slice() else {
            panic!("{model:?}");
        };
        assert_eq!(j.jwks, JwksSource::File("keys/jwks.json".into()));
        assert_eq!(j.algorithms, [JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]);
        assert_eq!(j.leeway, Duration::from_secs(5));
        assert_eq!(j.min_refresh_interval, Duration::from_secs(10));
        assert_eq!(
            j.claims,
            JwtClaims {
                tier: "plan".into(),
                ..JwtClaims::default()
            }
        );
        assert_eq!(j.default_tier.as_deref(), Some("pro"));
    }

    #[test]
    fn an_invalid_filter_is_reported_and_left_out() {
        let (model, errors) = validated(&json!([
            {"kind": "request-id"},
            {"kind": "jwt", "algorithms": ["HS256"], "default_tier": "gold"},
            {"kind": "rate-limit"},
        ]));
        assert_eq!(
            errors,
            [
                "`jwt` needs exactly one of `jwks_file` or `jwks_url`".to_string(),
                format!(
                    "unsupported JWT algorithm `HS256` (accepted: {})",
                    JWT_ALGORITHMS.join(", ")
                ),
                "unknown tier `gold`".to_string(),
            ]
        );
        let kinds: Vec<&str> = model.iter().map(FilterConfig::kind).collect();
        assert_eq!(kinds, ["request-id", "rate-limit"]);
    }

    /// `/admin/config` shows a route's filters by serializing them: the model must render exactly as
    /// the spec did (defaults filled in, repeats kept, unset options left out).
    #[test]
    fn the_model_serializes_as_the_spec_does() {
        let written = json!([
            {"kind": "request-id"},
            {"kind": "request-id", "trust_incoming": false},
            {"kind": "api-key", "optional": true},
            {"kind": "jwt", "jwks_url": "https://idp.example/jwks", "algorithms": ["RS256", "EdDSA", "RS256"],
             "issuer": "https://idp.example", "audiences": ["a", "b"], "default_tier": "pro", "optional": true},
            {"kind": "jwt", "jwks_file": "jwks.json", "algorithms": ["PS512"],
             "claims": {"user": "email", "roles": "scope"}, "min_refresh_interval_seconds": 60},
            {"kind": "rate-limit"},
            {"kind": "concurrency", "max": 2},
            {"kind": "concurrency", "max": 5, "scope": "org"},
        ]);
        let specs: Vec<FilterSpec> = serde_json::from_value(written.clone()).unwrap();
        let (model, errors) = validated(&written);
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            serde_json::to_value(&model).unwrap(),
            serde_json::to_value(&specs).unwrap()
        );
    }
}
