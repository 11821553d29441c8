//! `config/schema.json` is `leaky_config::json_schema()`, committed. Regenerate it with
//! `LEAKY_UPDATE_SCHEMA=1 cargo test -p leaky-config --test integration -- schema::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn schema_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.json")
}

#[test]
fn committed_schema_matches_the_code() {
    let generated = leaky_config::json_schema();
    let path = schema_file();
    if std::env::var_os("LEAKY_UPDATE_SCHEMA").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the schema types in config/src/spec/; regenerate it with\n\
         \n    LEAKY_UPDATE_SCHEMA=1 cargo test -p leaky-config --test integration -- schema::\n",
        path.display()
    );
}

#[test]
fn schema_is_json_and_knows_the_filter_kinds() {
    let schema = leaky_config::json_schema();
    let value: serde_json::Value = serde_json::from_str(&schema).expect("schema is valid JSON");
    assert!(value.is_object());
    assert_eq!(value["title"], "ConfigFile");
    for kind in ["request-id", "api-key", "jwt"] {
        assert!(
            schema.contains(&format!("\"{kind}\"")),
            "schema does not mention the filter kind `{kind}`"
        );
    }
}
