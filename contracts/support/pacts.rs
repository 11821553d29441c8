//! The pact files' side of the contract tests, shared by every crate's tests (each includes this
//! file with `#[path]`): where the committed pacts live (`contracts/pacts/`), the drift check a
//! consumer test ends with, and the guard that keeps Pact's usage metrics off the network.
//!
//! A consumer test builds its pact, drives its real client or decoder against it, then calls
//! [`check_or_update`]: the pact it generated must equal the committed file, so a change to what a
//! consumer expects shows up in review as a change to `contracts/pacts/` (like the OpenAPI drift
//! check). `LEAKY_UPDATE_PACTS=1` rewrites the file instead. The providers' tests verify the
//! committed files (`verify.rs`), so a provider change that breaks a consumer fails `cargo test`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `contracts/pacts/` (every crate with contract tests sits one level below the repository root).
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts/pacts")
}

/// The committed pact between `consumer` and `provider` (Pact's own naming).
pub fn file(consumer: &str, provider: &str) -> PathBuf {
    dir().join(format!("{consumer}-{provider}.json"))
}

/// Pact's libraries report anonymous usage metrics over the network unless this is set; the
/// repository's `.cargo/config.toml` sets it for every `cargo test`. A test run some other way
/// stops here rather than reach outside the machine.
pub fn no_metrics() {
    assert_eq!(
        std::env::var("PACT_DO_NOT_TRACK").as_deref(),
        Ok("true"),
        "set PACT_DO_NOT_TRACK=true (see .cargo/config.toml): Pact would report usage metrics over the network"
    );
}

/// `pact` (the JSON of a V4 pact) without the metadata naming the Pact library versions, which
/// change with a dependency bump, not with the contract.
fn normalized(mut pact: Value) -> Value {
    if let Some(meta) = pact.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("pactRust");
    }
    pact
}

/// Compares the pact a consumer test generated with the committed one, or rewrites the committed
/// one when `LEAKY_UPDATE_PACTS=1`. Panics on a difference, naming the command that updates it.
pub fn check_or_update(consumer: &str, provider: &str, generated: Value) {
    let generated = normalized(generated);
    let path = file(consumer, provider);
    let text = serde_json::to_string_pretty(&generated).expect("a pact serializes") + "\n";
    if std::env::var("LEAKY_UPDATE_PACTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(dir()).expect("contracts/pacts/ can be created");
        std::fs::write(&path, text).expect("the pact file can be written");
        return;
    }
    let committed: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if committed != generated {
        let fresh =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{consumer}-{provider}.json"));
        std::fs::write(&fresh, text).expect("the generated pact can be written");
        panic!(
            "{} differs from the pact this consumer test generates (written to {}).\n\
             If the consumer's expectations changed on purpose, run the test with \
             LEAKY_UPDATE_PACTS=1 and commit the file: the provider's verification then checks the \
             new contract (docs/contracts.md).",
            path.display(),
            fresh.display()
        );
    }
}
