//! A route's endpoint allow-list, compiled once per config version: the validated rules
//! (`leaky_config::endpoints`) bucketed by method, so a request compares its normalized path's segments
//! against the few patterns of its own method only. No allocation, no lock.

use http::Method;
use leaky_config::endpoints::{Endpoint, EndpointMethod, PathPattern};
use leaky_filters::Principal;

/// GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, and every other method.
const BUCKETS: usize = 8;

struct Rule {
    path: PathPattern,
    roles: Box<[Box<str>]>,
    tiers: Box<[Box<str>]>,
}

impl Rule {
    /// Whether the caller may use this rule: no restriction, or a principal with a listed role (when
    /// roles are listed) and of a listed tier (when tiers are listed).
    fn admits(&self, who: Option<&Principal>) -> bool {
        if self.roles.is_empty() && self.tiers.is_empty() {
            return true;
        }
        let Some(p) = who else { return false };
        let role =
            self.roles.is_empty() || self.roles.iter().any(|r| p.roles.iter().any(|h| h == &**r));
        let tier = self.tiers.is_empty() || self.tiers.iter().any(|t| **t == *p.tier);
        role && tier
    }
}

/// The compiled allow-list of one route.
pub struct EndpointMatcher {
    buckets: [Vec<Rule>; BUCKETS],
}

impl EndpointMatcher {
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let mut buckets: [Vec<Rule>; BUCKETS] = Default::default();
        for e in endpoints {
            let slots = match bucket_of(e.method) {
                Some(i) => i..i + 1,
                None => 0..BUCKETS,
            };
            for i in slots {
                buckets[i].push(Rule {
                    path: e.path.clone(),
                    roles: e.roles.iter().map(|s| s.as_str().into()).collect(),
                    tiers: e.tiers.iter().map(|s| s.as_str().into()).collect(),
                });
            }
        }
        EndpointMatcher { buckets }
    }

    /// Whether `method` on `rest` (the normalized path after the route prefix) is allowed for `who`.
    pub fn allows(&self, method: &Method, rest: &str, who: Option<&Principal>) -> bool {
        self.buckets[bucket(method)]
            .iter()
            .any(|r| r.path.matches(rest) && r.admits(who))
    }
}

fn bucket(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The one bucket of a concrete method; `None` for `*` (every bucket).
fn bucket_of(m: EndpointMethod) -> Option<usize> {
    Some(match m {
        EndpointMethod::Get => 0,
        EndpointMethod::Head => 1,
        EndpointMethod::Post => 2,
        EndpointMethod::Put => 3,
        EndpointMethod::Patch => 4,
        EndpointMethod::Delete => 5,
        EndpointMethod::Options => 6,
        EndpointMethod::Any => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use leaky_config::endpoints::default_endpoints;
    use leaky_config::Dialect;
    use leaky_filters::AuthMethod;
    use std::sync::Arc;

    fn rule(method: EndpointMethod, path: &str, roles: &[&str], tiers: &[&str]) -> Endpoint {
        Endpoint {
            method,
            path: PathPattern::parse(path).unwrap(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            tiers: tiers.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn defaults(d: Dialect) -> Vec<Endpoint> {
        default_endpoints(d)
            .iter()
            .map(|(m, p)| rule(*m, p, &[], &[]))
            .collect()
    }

    fn principal(tier: &str, roles: &[&str]) -> Principal {
        Principal {
            id: "k".into(),
            user: "u".into(),
            org: None,
            tier: tier.into(),
            roles: roles
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into(),
            models: Arc::from(Vec::new()),
            method: AuthMethod::ApiKey,
        }
    }

    #[test]
    fn openai_defaults_allow_inference_and_listing_only() {
        let m = EndpointMatcher::new(&defaults(Dialect::Openai));
        for (method, path) in [
            (Method::POST, "/chat/completions"),
            (Method::POST, "/completions"),
            (Method::POST, "/embeddings"),
            (Method::POST, "/responses"),
            (Method::GET, "/models"),
            (Method::GET, "/models/gpt-4o"),
        ] {
            assert!(m.allows(&method, path, None), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/files"),
            (Method::DELETE, "/files/file-1"),
            (Method::GET, "/fine_tuning/jobs"),
            (Method::GET, "/chat/completions"),
            (Method::DELETE, "/models/gpt-4o"),
            (Method::POST, "/models"),
            (Method::GET, "/models/a/b"),
        ] {
            assert!(!m.allows(&method, path, None), "{method} {path}");
        }
    }

    #[test]
    fn google_and_dashscope_defaults() {
        let g = EndpointMatcher::new(&defaults(Dialect::Google));
        assert!(g.allows(
            &Method::POST,
            "/models/gemini-2.5-flash:generateContent",
            None
        ));
        assert!(g.allows(&Method::POST, "/models/m:batchEmbedContents", None));
        assert!(g.allows(&Method::GET, "/models/gemini-2.5-flash", None));
        assert!(!g.allows(&Method::GET, "/files", None));
        assert!(!g.allows(&Method::POST, "/models/m:predict", None));
        assert!(!g.allows(&Method::POST, "/cachedContents", None));
        let d = EndpointMatcher::new(&defaults(Dialect::Dashscope));
        assert!(d.allows(
            &Method::POST,
            "/services/aigc/text-generation/generation",
            None
        ));
        assert!(!d.allows(&Method::GET, "/tasks/123", None));
    }

    #[test]
    fn extra_rules_by_method_role_and_tier() {
        let mut rules = defaults(Dialect::Openai);
        rules.push(rule(EndpointMethod::Get, "/files", &[], &[]));
        rules.push(rule(EndpointMethod::Delete, "/files/{id}", &["admin"], &[]));
        rules.push(rule(EndpointMethod::Any, "/batches/**", &[], &["pro"]));
        let m = EndpointMatcher::new(&rules);
        let dev = principal("free", &["developer"]);
        let admin = principal("free", &["admin"]);
        let pro = principal("pro", &[]);
        assert!(m.allows(&Method::GET, "/files", Some(&dev)));
        assert!(!m.allows(&Method::DELETE, "/files/f1", Some(&dev)));
        assert!(!m.allows(&Method::DELETE, "/files/f1", None));
        assert!(m.allows(&Method::DELETE, "/files/f1", Some(&admin)));
        assert!(m.allows(&Method::PUT, "/batches/b1/cancel", Some(&pro)));
        assert!(m.allows(
            &Method::from_bytes(b"PURGE").unwrap(),
            "/batches",
            Some(&pro)
        ));
        assert!(!m.allows(&Method::POST, "/batches", Some(&dev)));
    }
}
