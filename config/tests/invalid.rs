//! Golden tests: every `invalid/*.yaml` fixture is a complete config with exactly one problem, and its
//! first line says the one error it must produce: `# expect: <file>:<line>:<col>: <message>`, with
//! `<file>` relative to `config/tests/invalid/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

const EXPECT: &str = "# expect: ";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid")
}

/// Every variable is unset: `${X:-default}` takes its default, `${X}` is an error.
fn no_env(_: &str) -> Option<String> {
    None
}

/// The one-line result of loading `path`, or why it is not one error.
fn actual(dir: &Path, path: &Path) -> String {
    match leaky_config::load_with_env(path, &no_env) {
        Ok(_) => "loaded without errors".into(),
        Err(errs) => {
            let lines: Vec<String> = errs
                .0
                .iter()
                .map(|e| {
                    let shown = e.to_string();
                    let prefix = format!("{}/", dir.display());
                    shown.strip_prefix(&prefix).unwrap_or(&shown).to_string()
                })
                .collect();
            if lines.len() == 1 {
                lines[0].clone()
            } else {
                format!("{} errors:\n      {}", lines.len(), lines.join("\n      "))
            }
        }
    }
}

#[test]
fn every_invalid_fixture_yields_exactly_its_expected_error() {
    let dir = fixture_dir();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 40,
        "only {} fixtures found in {}",
        fixtures.len(),
        dir.display()
    );

    let mut mismatches = Vec::new();
    for path in &fixtures {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let got = actual(&dir, path);
        let Some(expected) = text.lines().next().and_then(|l| l.strip_prefix(EXPECT)) else {
            mismatches.push(format!(
                "{name}: first line must be `{EXPECT}<file>:<line>:<col>: <message>`\n    actual:   {got}"
            ));
            continue;
        };
        if got != expected.trim_end() {
            mismatches.push(format!(
                "{name}:\n    expected: {}\n    actual:   {got}",
                expected.trim_end()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} fixtures do not match:\n{}",
        mismatches.len(),
        fixtures.len(),
        mismatches.join("\n")
    );
}

/// Too large to commit as a fixture: a valid config padded past `MAX_CONFIG_BYTES` with comments.
#[test]
fn an_oversized_file_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oversized.yaml");
    let mut text = String::from(
        "providers:\n  openai:\n    base_url: http://127.0.0.1:18001\nroutes:\n  - name: v1\n    \
         prefix: /v1\n    upstream: { provider: openai }\n",
    );
    let line = format!("# {}\n", "x".repeat(1021));
    while (text.len() as u64) <= leaky_config::MAX_CONFIG_BYTES {
        text.push_str(&line);
    }
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        actual(dir.path(), &path),
        "oversized.yaml: config file is larger than 16 MiB (16777216 bytes)"
    );
    // One byte under the limit still loads.
    text.truncate(leaky_config::MAX_CONFIG_BYTES as usize - 1);
    text.truncate(text.rfind('\n').unwrap() + 1);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(actual(dir.path(), &path), "loaded without errors");
}

/// A document given as text is validated like a file and its errors name the label given.
#[test]
fn a_text_document_is_validated_like_a_file_with_positions_under_its_label() {
    let label = Path::new("pushed v7");
    let base = Path::new(".");
    let ok = "providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n";
    let config = leaky_config::load_text(label, ok, base, &no_env).unwrap();
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.files, [label.to_path_buf()]);

    let bad = ok.replace("prefix: /v1\n", "prefix: v1\n");
    let errors = leaky_config::load_text(label, &bad, base, &no_env).unwrap_err();
    let first = errors.0[0].to_string();
    assert!(first.starts_with("pushed v7:7:"), "{first}");

    let extends = format!("extends: base.yaml\n{ok}");
    let errors = leaky_config::load_text(label, &extends, base, &no_env).unwrap_err();
    assert_eq!(
        errors.0[0].to_string(),
        "pushed v7:1:10: `extends` is for files on disk; a document given as text must be complete"
    );
}
