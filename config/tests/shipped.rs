//! The shipped configuration files load cleanly, dev.yaml carries the documented demo keys, and
//! `extends` overlays merge as documented.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_config::{load_with_env, Config, RouteUpstream};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const SHIPPED: &[&str] = &[
    "base.yaml",
    "dev.yaml",
    "staging.yaml",
    "prod.yaml",
    "stack.yaml",
];

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Every variable is set: provider URLs to a well-formed URL, the Redis URL to a Redis one,
/// everything else (credentials) to a recognisable dummy.
fn dummy_env(name: &str) -> Option<String> {
    Some(if name.ends_with("_BASE_URL") {
        "https://dummy.example.com".into()
    } else if name == "REDIS_URL" {
        "redis://redis.example.com:6379".into()
    } else {
        format!("dummy-{name}")
    })
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_ok(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Config {
    load_with_env(path, env).unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()))
}

#[test]
fn every_shipped_file_loads_with_all_variables_set() {
    for name in SHIPPED {
        let config = load_ok(&shipped(name), &dummy_env);
        assert_eq!(config.providers.len(), 4, "{name}");
        assert_eq!(config.routes.len(), 6, "{name}");
        // stack.yaml adds the `prepaid` tier its balance policy charges.
        let tiers = if *name == "stack.yaml" { 4 } else { 3 };
        assert_eq!(config.tiers.len(), tiers, "{name}");
        // Gemini native under both API versions, same chain (the SDK defaults to /v1).
        let gemini: Vec<_> = config
            .routes
            .iter()
            .filter(|r| r.dialect == leaky_config::Dialect::Google)
            .map(|r| match &r.upstream {
                RouteUpstream::Fixed(t) => (
                    r.prefix.as_str(),
                    t.provider.as_str(),
                    t.path_prefix.as_str(),
                    r.filters.len(),
                ),
                RouteUpstream::ByModel(_) => panic!("{name}: {} routes by model", r.name),
            })
            .collect();
        let chain = config.routes[0].filters.len();
        assert_eq!(
            gemini,
            [
                ("/gemini/v1beta", "gemini", "/v1beta", chain),
                ("/gemini/v1", "gemini", "/v1", chain)
            ],
            "{name}"
        );
    }
}

#[test]
fn base_and_dev_load_with_no_variables_set() {
    for name in ["base.yaml", "dev.yaml", "stack.yaml"] {
        let config = load_ok(&shipped(name), &no_env);
        let openai = &config.providers["openai"];
        assert_eq!((openai.host.as_str(), openai.port), ("127.0.0.1", 18001));
        assert_eq!(
            openai.credential.as_ref().map(|s| s.expose()),
            Some("sk-stub-openai"),
            "{name}"
        );
    }
}

#[test]
fn staging_and_prod_share_limits_through_redis_and_dev_limits_in_process() {
    for name in ["staging.yaml", "prod.yaml"] {
        let config = load_ok(&shipped(name), &dummy_env);
        match &config.limits.store {
            leaky_config::LimitStore::Redis(r) => {
                assert_eq!(r.url, "redis://redis.example.com:6379", "{name}");
                assert_eq!((r.timeout.as_millis(), r.replicas), (20, 3), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let dev = load_ok(&shipped("dev.yaml"), &no_env);
    assert_eq!(dev.limits.store, leaky_config::LimitStore::Memory);
    // The demo tiers carry the limits the README advertises.
    let names: Vec<&str> = dev
        .limits
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for p in [
        "free-rpm",
        "free-tpm",
        "free-tpd",
        "pro-rpm",
        "pro-tpm",
        "pro-tpd",
        "enterprise-rpm",
        "enterprise-tpm",
    ] {
        assert!(names.contains(&p), "{p} missing from {names:?}");
    }
    let free_rpm = dev
        .limits
        .policies
        .iter()
        .find(|p| p.name == "free-rpm")
        .unwrap();
    assert_eq!(free_rpm.quota_and_window(), (20, 60));
    assert_eq!(free_rpm.tiers, vec!["free".to_string()]);
}

#[test]
fn staging_and_prod_take_credentials_from_the_environment() {
    for name in ["staging.yaml", "prod.yaml"] {
        let config = load_ok(&shipped(name), &dummy_env);
        for (provider, var) in [
            ("openai", "OPENAI_API_KEY"),
            ("gemini", "GEMINI_API_KEY"),
            ("gemini-openai", "GEMINI_API_KEY"),
            ("qwen", "DASHSCOPE_API_KEY"),
        ] {
            let p = &config.providers[provider];
            assert!(p.tls, "{name}: {provider} must use https");
            assert_eq!(
                p.credential.as_ref().map(|s| s.expose().to_string()),
                Some(format!("dummy-{var}")),
                "{name}: {provider}"
            );
        }
        assert!(config.keys.is_empty(), "{name} must not ship keys");
        // Without the credentials set, they fail rather than fall back to a stub.
        let errs = load_with_env(&shipped(name), &no_env).unwrap_err();
        assert_eq!(errs.0.len(), 4, "{name}: {errs}");
        assert!(
            errs.0.iter().all(|e| e.message.contains("is not set")),
            "{name}: {errs}"
        );
    }
}

#[test]
fn dev_has_the_documented_admin_token_and_base_none() {
    let dev = load_ok(&shipped("dev.yaml"), &no_env);
    let token = dev
        .server
        .admin_token
        .as_ref()
        .expect("dev.yaml sets admin_token");
    assert!(token.matches("lt-dev-admin"));
    assert!(!token.matches("lt-dev-admi"));
    let base = load_ok(&shipped("base.yaml"), &no_env);
    assert!(base.server.admin_token.is_none(), "empty means unset");
}

#[test]
fn dev_has_the_three_demo_keys() {
    let config = load_ok(&shipped("dev.yaml"), &no_env);
    let got: Vec<(&str, &str, String)> = config
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.tier.as_str(), hex::encode(k.sha256)))
        .collect();
    let want: Vec<(&str, &str, String)> = [
        ("demo-free", "free", "lt-demo-free"),
        ("demo-pro", "pro", "lt-demo-pro"),
        ("demo-enterprise", "enterprise", "lt-demo-enterprise"),
    ]
    .into_iter()
    .map(|(id, tier, key)| (id, tier, hex::encode(Sha256::digest(key))))
    .collect();
    assert_eq!(got, want);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const BASE: &str = "\
server:
  listen: 127.0.0.1:8080
  threads: 3
providers:
  a:
    base_url: http://127.0.0.1:1001
    models: [m1, m2]
  b:
    base_url: http://127.0.0.1:1002
routes:
  - name: ra
    prefix: /a
    upstream: { provider: a }
  - name: rb
    prefix: /b
    upstream: { provider: b }
tiers:
  free: { priority: low }
";

#[test]
fn overlay_overrides_map_keys_and_replaces_lists() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.yaml", BASE);
    let overlay = write(
        dir.path(),
        "overlay.yaml",
        "\
extends: base.yaml
server:
  threads: 5
providers:
  a:
    base_url: https://a.example.com
routes:
  - name: rc
    prefix: /c
    upstream: { provider: b }
",
    );
    let config = load_ok(&overlay, &no_env);

    // Map keys: the overlay's win, the base's others stay.
    assert_eq!(config.server.threads, 5);
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    let a = &config.providers["a"];
    assert_eq!(
        (a.tls, a.host.as_str(), a.port),
        (true, "a.example.com", 443)
    );
    assert_eq!(a.models, ["m1", "m2"]);
    assert_eq!(config.providers["b"].port, 1002);
    assert!(config.tiers.contains_key("free"));

    // Lists: the overlay's replaces the base's.
    let routes: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["rc"]);
    assert!(
        matches!(&config.routes[0].upstream, RouteUpstream::Fixed(t) if t.provider == "b"),
        "{:?}",
        config.routes[0].upstream
    );

    // Overlay first.
    assert_eq!(config.files, [overlay, dir.path().join("base.yaml")]);
}

fn single_error(path: &Path) -> String {
    let errs = load_with_env(path, &no_env).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    errs.0[0].to_string()
}

#[test]
fn errors_point_into_the_file_that_defines_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.yaml");
    let overlay = write(
        dir.path(),
        "overlay.yaml",
        "extends: base.yaml\nserver:\n  listen: 0.0.0.0:8080\n",
    );

    // A type error in the base (serde).
    write(
        dir.path(),
        "base.yaml",
        &BASE.replace("threads: 3", "threads: lots"),
    );
    assert_eq!(
        single_error(&overlay),
        format!(
            "{}:3:12: invalid type: string \"lots\", expected usize",
            base.display()
        )
    );

    // A validation error in the base.
    write(
        dir.path(),
        "base.yaml",
        &BASE.replace("{ provider: b }", "{ provider: c }"),
    );
    assert_eq!(
        single_error(&overlay),
        format!(
            "{}:16:27: unknown provider `c` (defined: a, b)",
            base.display()
        )
    );

    // A value the overlay overrides is reported in the overlay.
    write(dir.path(), "base.yaml", BASE);
    let overlay = write(
        dir.path(),
        "overlay.yaml",
        "extends: base.yaml\nserver:\n  threads: 0\n",
    );
    assert_eq!(
        single_error(&overlay),
        format!("{}:3:12: `threads` must be at least 1", overlay.display())
    );
}

#[test]
fn the_stack_charges_a_prepaid_balance_to_the_prepaid_tier_only() {
    let config = load_ok(&shipped("stack.yaml"), &no_env);
    let balance: Vec<_> = config
        .limits
        .policies
        .iter()
        .filter(|p| p.unit == leaky_config::Unit::Balance)
        .map(|p| (p.name.as_str(), p.tiers.clone()))
        .collect();
    assert_eq!(balance, [("prepaid", vec!["prepaid".to_owned()])]);
    assert!(config.tiers.contains_key("prepaid"));
    // Shared policies come first; base.yaml's two pools are kept beside the balance.
    let shared: Vec<_> = config.limits.policies[..3]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(shared, ["org-tokens", "openai-pool", "prepaid"]);
}
