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
    // `--offline`: their upstreams are public host names, and the test machine may have no DNS.
    let (code, stdout) = check_config(&dir, &["--offline", "staging.yaml", "prod.yaml"], &creds);
    assert_eq!(code, 0, "{stdout}");
}

/// A config that validation accepts, with a JWT filter reading `jwks_file` and an upstream at
/// `base_url`, in its own directory (JWKS paths are relative to it).
fn buildable(jwks_file: &str, base_url: &str, limits: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/tests/fixtures/jwt/jwks.json");
    std::fs::copy(shipped, dir.path().join("jwks.json")).unwrap();
    let config = format!(
        r#"providers:
  openai:
    base_url: {base_url}
    credential: sk-test
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: jwt
        jwks_file: {jwks_file}
        algorithms: [RS256]
        default_tier: pro
tiers:
  pro: {{ priority: normal }}
{limits}"#
    );
    std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
    dir
}

/// Issue #12: check-config builds the snapshot as start-up does, so what validation cannot see
/// fails the check with the start-up's message (before, it printed `ok` and the start-up failed).
#[test]
fn a_missing_jwks_file_fails_the_check() {
    let ok = buildable("jwks.json", "http://127.0.0.1:9", "");
    let (code, stdout) = check_config(ok.path(), &["gateway.yaml"], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        "gateway.yaml: ok (1 routes, 1 providers, 0 keys)"
    );

    let missing = buildable("missing.json", "http://127.0.0.1:9", "");
    let (code, stdout) = check_config(missing.path(), &["gateway.yaml"], &[]);
    assert_eq!(code, 1, "{stdout}");
    // The path as start-up would name it: relative to the config file, given here relatively.
    assert_eq!(
        stdout.trim_end(),
        "gateway.yaml: route `v1`: jwt: cannot read JWKS file `missing.json`: \
         No such file or directory (os error 2)"
    );
}

#[test]
fn an_unresolvable_upstream_fails_the_check() {
    // `.invalid` never resolves (RFC 2606).
    let dir = buildable("jwks.json", "http://upstream.invalid:8080", "");
    let (code, stdout) = check_config(dir.path(), &["gateway.yaml"], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with(
            "gateway.yaml: deployment `openai/default`: cannot resolve `upstream.invalid`: "
        ),
        "{stdout}"
    );
    // Offline, names are not looked up.
    let (code, stdout) = check_config(dir.path(), &["--offline", "gateway.yaml"], &[]);
    assert_eq!(code, 0, "{stdout}");
}

/// The limiter is compiled, but never connects: a Redis store that is not there passes at once.
#[test]
fn a_redis_store_is_not_connected() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limits = format!(
        "limits:
  store: redis
  redis:
    url: redis://127.0.0.1:{port}
"
    );
    let dir = buildable("jwks.json", "http://127.0.0.1:9", &limits);
    let start = std::time::Instant::now();
    let (code, stdout) = check_config(dir.path(), &["gateway.yaml"], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
