//! One test per rule of the policy, in the order the module docs list them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use http::HeaderValue;
use leaky_config::{CacheScope, CacheStoreKind};
use std::time::Duration;

fn config(temperature: CacheTemperature, tiers: &[&str]) -> RouteCache {
    RouteCache {
        store: CacheStoreKind::Memory,
        ttl: Duration::from_secs(300),
        tiers: tiers.iter().map(|t| t.to_string()).collect(),
        scope: CacheScope::Org,
        temperature,
        max_entry_bytes: 1 << 20,
        charge: 0.0,
        wait: Duration::from_secs(30),
    }
}

fn never() -> CachePolicy {
    CachePolicy::from_config(&config(CacheTemperature::Never, &[]))
}

const GREEDY: &str =
    r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;

/// An owned request the tests tweak, then borrow as facts.
struct Req {
    dialect: Dialect,
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    body: String,
    org: Option<&'static str>,
    key_id: Option<&'static str>,
    tier: Option<&'static str>,
}

impl Req {
    fn openai(body: &str) -> Req {
        Req {
            dialect: Dialect::Openai,
            method: Method::POST,
            path: "/chat/completions",
            query: None,
            headers: HeaderMap::new(),
            body: body.to_string(),
            org: Some("acme"),
            key_id: Some("k1"),
            tier: Some("enterprise"),
        }
    }

    fn google(path: &'static str, body: &str) -> Req {
        Req {
            dialect: Dialect::Google,
            path,
            ..Req::openai(body)
        }
    }

    fn dashscope(path: &'static str, body: &str) -> Req {
        Req {
            dialect: Dialect::Dashscope,
            path,
            ..Req::openai(body)
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            route: "v1",
            dialect: self.dialect,
            method: &self.method,
            path: self.path,
            query: self.query,
            headers: &self.headers,
            body: self.body.as_bytes(),
            org: self.org,
            key_id: self.key_id,
            user: Some("alice"),
            tier: self.tier,
            model: Some("gpt-4o"),
        }
    }
}

fn decide(policy: &CachePolicy, req: &Req) -> Decision {
    let d = policy.decide(&req.facts());
    // The pre-parsed path agrees whenever the body parses.
    if let Ok(v) = serde_json::from_str::<Value>(&req.body) {
        assert_eq!(policy.decide_parsed(&req.facts(), &v), d);
    }
    d
}

fn bypass(policy: &CachePolicy, req: &Req) -> Option<&'static str> {
    match decide(policy, req) {
        Decision::Bypass(r) => Some(r.label()),
        Decision::Cache { .. } => None,
    }
}

/// `(read, store)` of a cached decision.
fn cached(policy: &CachePolicy, req: &Req) -> (bool, bool) {
    match decide(policy, req) {
        Decision::Cache { read, store, .. } => (read, store),
        Decision::Bypass(r) => panic!("bypassed: {}", r.label()),
    }
}

#[test]
fn a_greedy_post_is_read_and_stored() {
    assert_eq!(cached(&never(), &Req::openai(GREEDY)), (true, true));
}

#[test]
fn only_post_is_cached() {
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
        let req = Req {
            method,
            ..Req::openai(GREEDY)
        };
        assert_eq!(bypass(&never(), &req), Some("method"));
    }
}

#[test]
fn the_route_may_cache_only_some_tiers() {
    let p = CachePolicy::from_config(&config(CacheTemperature::Never, &["enterprise", "pro"]));
    assert_eq!(cached(&p, &Req::openai(GREEDY)), (true, true));
    let free = Req {
        tier: Some("free"),
        ..Req::openai(GREEDY)
    };
    assert_eq!(bypass(&p, &free), Some("tier"));
    let none = Req {
        tier: None,
        ..Req::openai(GREEDY)
    };
    assert_eq!(bypass(&p, &none), Some("tier"));
    // No tiers listed: every tier, and no tier at all.
    assert_eq!(cached(&never(), &none), (true, true));
}

#[test]
fn the_opt_out_header_bypasses() {
    for v in ["bypass", "off", "OFF", " Bypass "] {
        let req = Req::openai(GREEDY).header("x-leaky-cache", v);
        assert_eq!(bypass(&never(), &req), Some("opt_out"), "{v}");
    }
    let other = Req::openai(GREEDY).header("x-leaky-cache", "please");
    assert_eq!(cached(&never(), &other), (true, true));
}

#[test]
fn no_store_bypasses_and_no_cache_refreshes() {
    let p = never();
    for v in [
        "no-store",
        "No-Store",
        "max-age=0, no-store",
        "no-cache, no-store",
    ] {
        let req = Req::openai(GREEDY).header("cache-control", v);
        assert_eq!(bypass(&p, &req), Some("no_store"), "{v}");
    }
    // On two lines, too.
    let two = Req::openai(GREEDY)
        .header("cache-control", "no-cache")
        .header("cache-control", "no-store");
    assert_eq!(bypass(&p, &two), Some("no_store"));
    for v in [
        "no-cache",
        "NO-CACHE",
        "max-age=0,no-cache",
        "no-cache=\"x\"",
    ] {
        let req = Req::openai(GREEDY).header("cache-control", v);
        assert_eq!(cached(&p, &req), (false, true), "{v}");
    }
    let max_age = Req::openai(GREEDY).header("cache-control", "max-age=60");
    assert_eq!(cached(&p, &max_age), (true, true));
}

#[test]
fn a_refresh_writes_under_the_same_key_it_would_read() {
    let p = never();
    let key = |req: &Req| match decide(&p, req) {
        Decision::Cache { key, .. } => key,
        Decision::Bypass(r) => panic!("{}", r.label()),
    };
    assert_eq!(
        key(&Req::openai(GREEDY)),
        key(&Req::openai(GREEDY).header("cache-control", "no-cache"))
    );
}

#[test]
fn a_request_without_a_principal_is_not_cached() {
    let anonymous = Req {
        org: None,
        key_id: None,
        ..Req::openai(GREEDY)
    };
    assert_eq!(bypass(&never(), &anonymous), Some("no_tenant"));
    let keyed = Req {
        org: None,
        ..Req::openai(GREEDY)
    };
    assert_eq!(cached(&never(), &keyed), (true, true));
}

#[test]
fn two_orgs_get_two_keys() {
    let p = never();
    let key = |org| match decide(
        &p,
        &Req {
            org: Some(org),
            ..Req::openai(GREEDY)
        },
    ) {
        Decision::Cache { key, .. } => key,
        Decision::Bypass(r) => panic!("{}", r.label()),
    };
    assert_ne!(key("acme"), key("globex"));
    assert_eq!(key("acme"), key("acme"));
}

#[test]
fn only_json_objects_are_cached() {
    for body in ["", "not json", "{\"model\":", "[1,2]", "\"text\"", "42"] {
        assert_eq!(
            bypass(&never(), &Req::openai(body)),
            Some("not_json"),
            "{body:?}"
        );
    }
}

#[test]
fn openai_randomness_per_setting() {
    let [never, seeded, always] = [
        CacheTemperature::Never,
        CacheTemperature::Seeded,
        CacheTemperature::Always,
    ]
    .map(|t| CachePolicy::from_config(&config(t, &[])));
    let cases: [(&str, [bool; 3]); 10] = [
        (r#"{"model":"m","temperature":0}"#, [true, true, true]),
        (
            r#"{"model":"m","temperature":0.0,"n":3}"#,
            [true, true, true],
        ),
        (
            r#"{"model":"m","temperature":0,"seed":1}"#,
            [true, true, true],
        ),
        (r#"{"model":"m","top_p":0}"#, [true, true, true]),
        (r#"{"model":"m"}"#, [false, false, true]),
        (r#"{"model":"m","temperature":null}"#, [false, false, true]),
        (r#"{"model":"m","temperature":0.7}"#, [false, false, true]),
        (r#"{"model":"m","temperature":"0"}"#, [false, false, true]),
        (
            r#"{"model":"m","temperature":0.7,"seed":42}"#,
            [false, true, true],
        ),
        (r#"{"model":"m","seed":null}"#, [false, false, true]),
    ];
    for (body, expected) in cases {
        let got = [&never, &seeded, &always].map(|p| {
            let b = bypass(p, &Req::openai(body));
            assert!(b.is_none() || b == Some("randomness"), "{body}: {b:?}");
            b.is_none()
        });
        assert_eq!(got, expected, "{body}");
    }
}

#[test]
fn gemini_native_randomness_is_in_generation_config() {
    let path = "/models/gemini-2.0-flash:generateContent";
    let seeded = CachePolicy::from_config(&config(CacheTemperature::Seeded, &[]));
    let contents = r#""contents":[{"parts":[{"text":"hi"}]}]"#;
    let greedy = format!(r#"{{{contents},"generationConfig":{{"temperature":0}}}}"#);
    let snake = format!(r#"{{{contents},"generation_config":{{"temperature":0}}}}"#);
    let default = format!(r#"{{{contents}}}"#);
    let top_level = format!(r#"{{{contents},"temperature":0}}"#);
    let with_seed = format!(r#"{{{contents},"generationConfig":{{"temperature":1,"seed":5}}}}"#);
    let top_k = format!(r#"{{{contents},"generationConfig":{{"topK":1}}}}"#);
    assert_eq!(bypass(&never(), &Req::google(path, &greedy)), None);
    assert_eq!(bypass(&never(), &Req::google(path, &snake)), None);
    assert_eq!(bypass(&never(), &Req::google(path, &top_k)), None);
    assert_eq!(
        bypass(&never(), &Req::google(path, &default)),
        Some("randomness")
    );
    // A top-level `temperature` is not where Gemini reads it.
    assert_eq!(
        bypass(&never(), &Req::google(path, &top_level)),
        Some("randomness")
    );
    assert_eq!(
        bypass(&never(), &Req::google(path, &with_seed)),
        Some("randomness")
    );
    assert_eq!(bypass(&seeded, &Req::google(path, &with_seed)), None);
}

#[test]
fn dashscope_native_randomness_is_in_parameters() {
    let path = "/services/aigc/text-generation/generation";
    let seeded = CachePolicy::from_config(&config(CacheTemperature::Seeded, &[]));
    let greedy = r#"{"model":"qwen-plus","input":{"prompt":"hi"},"parameters":{"temperature":0}}"#;
    let default = r#"{"model":"qwen-plus","input":{"prompt":"hi"}}"#;
    let with_seed = r#"{"model":"qwen-plus","input":{"prompt":"hi"},"parameters":{"seed":9}}"#;
    assert_eq!(bypass(&never(), &Req::dashscope(path, greedy)), None);
    assert_eq!(
        bypass(&never(), &Req::dashscope(path, default)),
        Some("randomness")
    );
    assert_eq!(
        bypass(&never(), &Req::dashscope(path, with_seed)),
        Some("randomness")
    );
    assert_eq!(bypass(&seeded, &Req::dashscope(path, with_seed)), None);
}

#[test]
fn endpoints_without_sampling_are_cached_under_every_setting() {
    let random = r#"{"model":"text-embedding-3-small","input":"hi"}"#;
    let reqs = [
        Req {
            path: "/embeddings",
            ..Req::openai(random)
        },
        Req::google("/models/text-embedding-004:embedContent", random),
        Req::google("/models/text-embedding-004:batchEmbedContents", random),
        Req::google("/models/gemini-2.0-flash:countTokens", random),
        Req::dashscope("/services/embeddings/text-embedding/text-embedding", random),
    ];
    for req in &reqs {
        assert_eq!(cached(&never(), req), (true, true), "{}", req.path);
    }
    // The same body on a generating endpoint is random.
    assert_eq!(bypass(&never(), &Req::openai(random)), Some("randomness"));
}

#[test]
fn the_first_rule_that_applies_names_the_bypass() {
    let p = CachePolicy::from_config(&config(CacheTemperature::Never, &["enterprise"]));
    let req = Req {
        method: Method::GET,
        tier: Some("free"),
        ..Req::openai("not json")
    }
    .header("cache-control", "no-store");
    assert_eq!(bypass(&p, &req), Some("method"));
    let req = Req {
        tier: Some("free"),
        ..Req::openai("not json")
    }
    .header("cache-control", "no-store");
    assert_eq!(bypass(&p, &req), Some("tier"));
}

#[test]
fn labels_are_distinct_and_snake_case() {
    let labels: std::collections::HashSet<&str> =
        BypassReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), BypassReason::ALL.len());
    assert!(labels
        .iter()
        .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}
