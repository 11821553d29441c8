//! `flags:` end to end through the loader: a document with flags loads into evaluable flags, and the
//! spec type the control plane pushes serializes into YAML that loads back to the same flags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_config::{FlagSpec, STREAM_USAGE_INJECTION};
use std::collections::BTreeMap;
use std::path::Path;

const BASE: &str = "providers:
  openai:
    base_url: http://127.0.0.1:18001
routes:
  - name: v1
    prefix: /v1
    upstream: { provider: openai }
";

fn load(text: &str) -> leaky_config::Config {
    leaky_config::load_text(Path::new("pushed"), text, Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn flags_load_and_evaluate_per_org() {
    let config = load(&format!(
        "{BASE}flags:
  stream_usage_injection: {{ enabled: true, orgs: {{ acme: false }} }}
  new-checkout: {{ enabled: true, rollout_percent: 0, description: dark launch }}
"
    ));
    let usage = config.flags.resolve(&STREAM_USAGE_INJECTION);
    assert!(!usage.is_builtin());
    assert_eq!(usage.rollout_percent, 100, "default rollout");
    assert!(!usage.is_on(Some("acme")));
    assert!(usage.is_on(Some("globex")));
    let checkout = config.flags.get("new-checkout").unwrap();
    assert!(!checkout.is_on(Some("acme")));
    assert_eq!(checkout.description.as_deref(), Some("dark launch"));
}

#[test]
fn a_config_without_flags_keeps_the_builtin_defaults() {
    let config = load(BASE);
    assert!(config.flags.is_empty());
    let usage = config.flags.resolve(&STREAM_USAGE_INJECTION);
    assert!(usage.is_builtin() && usage.is_on(Some("acme")) && usage.is_on(None));
}

#[test]
fn pushed_flag_specs_round_trip_through_yaml() {
    let mut flags = BTreeMap::new();
    flags.insert(
        "stream_usage_injection".to_owned(),
        FlagSpec {
            enabled: true,
            rollout_percent: 30,
            orgs: BTreeMap::from([("Acme Corp".to_owned(), false)]),
            description: Some("pushed by the control plane".to_owned()),
        },
    );
    let doc = serde_json::json!({ "flags": serde_json::to_value(&flags).unwrap() });
    // JSON is YAML: the control plane may render its document either way.
    let config = load(&doc.to_string());
    let flag = config.flags.get("stream_usage_injection").unwrap();
    assert_eq!(flag.rollout_percent, 30);
    assert!(!flag.is_on(Some("Acme Corp")));
    assert_eq!(
        flag.is_on(Some("globex")),
        leaky_config::model::flags::bucket("stream_usage_injection", "globex") < 30
    );
}
