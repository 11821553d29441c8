//! `leaky-tokens check-config`: the exact message and exit status for every invalid fixture, and a
//! clean pass over the shipped files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn check_config(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"));
    cmd.current_dir(dir)
        .arg("check-config")
        .args(files)
        .env_remove("LEAKY_TEST_NEVER_SET_VAR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn every_invalid_fixture_prints_its_exact_message_and_exits_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tests/invalid");
    let mut mismatches = Vec::new();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        n += 1;
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: no `# expect:` line"));
        let (code, stdout) = check_config(&dir, &[&name], &[]);
        if code != 1 || stdout.trim_end() != expect {
            mismatches.push(format!(
                "{name}: exit {code}\n  expected: {expect}\n  actual:   {}",
                stdout.trim_end()
            ));
        }
    }
    assert!(n >= 30, "only {n} fixtures found");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn shipped_configs_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (code, stdout) = check_config(&dir, &["dev.yaml", "base.yaml"], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("dev.yaml: ok (6 routes, 4 providers, 3 keys)"),
        "{stdout}"
    );
    // Staging and production take every credential from the environment.
    let (code, stdout) = check_config(&dir, &["staging.yaml", "prod.yaml"], &[]);
    assert_eq!(code, 1);
    assert_eq!(stdout.matches("is not set").count(), 8, "{stdout}");
    let creds = [
        ("OPENAI_API_KEY", "x"),
        ("GEMINI_API_KEY", "x"),
        ("DASHSCOPE_API_KEY", "x"),
    ];
    let (code, stdout) = check_config(&dir, &["staging.yaml", "prod.yaml"], &creds);
    assert_eq!(code, 0, "{stdout}");
}
