//! Logs end to end: the gateway binary writes JSON lines to a file, the real OpenTelemetry Collector
//! (`scripts/lib/otelcol.sh`: filelog receiver → file exporter, observability/otel/otelcol.yaml)
//! tails it, and a request is found in the collector's output by its trace id — every line written
//! for it, each carrying `trace_id`, `span_id` and `request_id`, and every line of the run valid JSON.
//!
//! The request continues a caller's `traceparent` (unsampled, at ratio 0, so nothing is exported; the
//! ids are on its lines whether or not its trace is kept) and meets an upstream 503 that a retry
//! absorbs, so it writes the retry warning, the access line and the usage line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::pg as cp_common;

use crate::common::{chat, eventually, sha256_hex, Gateway};
use axum::extract::Request;
use axum::middleware::Next;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "lt-logs-acme";
/// The caller's trace (W3C example ids) and its span, the proxy's server span's parent.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The collector, tailing the given files into `output` (OTLP JSON), stopped on drop.
struct Collector {
    dir: tempfile::TempDir,
    output: PathBuf,
}

fn otelcol_sh(call: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new("bash")
        .arg("-c")
        .arg(format!(". {root}/scripts/lib/otelcol.sh && {call}"))
        .output()
        .unwrap()
}

impl Collector {
    fn start(files: &[&Path]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out/logs.json");
        let globs: Vec<String> = files.iter().map(|f| format!("'{}'", f.display())).collect();
        let out = otelcol_sh(&format!(
            "otelcol_start '{}' '{}' {}",
            dir.path().display(),
            output.display(),
            globs.join(" ")
        ));
        assert!(
            out.status.success(),
            "the collector did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Collector { dir, output }
    }

    /// Every log record written so far (OTLP JSON: one export batch per line).
    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let mut records = Vec::new();
        // A batch being written may end without its newline yet: only whole lines are read.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let batch: Value = serde_json::from_str(line).unwrap();
            for rl in batch["resourceLogs"].as_array().unwrap() {
                for sl in rl["scopeLogs"].as_array().unwrap() {
                    records.extend(sl["logRecords"].as_array().unwrap().iter().cloned());
                }
            }
        }
        records
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otelcol.log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        otelcol_sh(&format!("otelcol_stop '{}'", self.dir.path().display()));
    }
}

/// A record's string attribute (what the json_parser lifted from the line).
fn attr<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

/// An OpenAI stub deployment whose first chat request gets an injected 503 (the stubs' own fault
/// injection), every later one an answer.
async fn flaky_stub() -> std::net::SocketAddr {
    let hits = Arc::new(AtomicU64::new(0));
    let router =
        leaky_stubs::openai_router_with(&leaky_stubs::StubOptions::new(leaky_stubs::Latency::Off))
            .layer(axum::middleware::from_fn(
                move |mut req: Request, next: Next| {
                    let hits = hits.clone();
                    async move {
                        if req.uri().path().ends_with("/chat/completions")
                            && hits.fetch_add(1, Ordering::SeqCst) == 0
                        {
                            let fault = "status=503".parse().unwrap();
                            req.headers_mut().insert("x-stub-fault", fault);
                        }
                        next.run(req).await
                    }
                },
            ));
    common::serve(router).await
}

/// A metered route (the deployment's `tpm` budget) that retries a 503 once, on one deployment.
fn config(stub: std::net::SocketAddr) -> String {
    format!(
        r#"server:
  threads: 2
providers:
  openai:
    credential: sk-test
    models: [gpt-4o]
    deployments:
      - {{ name: a, base_url: "http://{stub}", tpm: 1000000 }}
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
    retry: {{ max_attempts: 2, budget_ratio: 1.0, backoff_base_ms: 1, backoff_max_ms: 5 }}
tiers:
  pro: {{}}
keys:
  - {{ id: acme, sha256: {key}, user: alice, org: acme, tier: pro }}
"#,
        key = sha256_hex(KEY.as_bytes())
    )
}

#[tokio::test]
async fn a_request_s_lines_are_found_in_the_collector_by_trace_id() {
    let stub = flaky_stub().await;
    // Tracing on (the ids exist) with nothing to export: ratio 0 and an unsampled caller, and the
    // request ends well. The endpoint is a closed port.
    let dead = common::free_port().to_string();
    let gw = Gateway::start_with(
        &config(stub),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{dead}")),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    let gateway_log = gw.dir.path().join("gateway.log");
    // docker-compose's collector reads Docker's json-file logs with the same config: a file of those
    // envelopes, written below, goes through the same collector.
    let docker_dir = gw.dir.path().join("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    let docker_glob = docker_dir.join("*-json.log");
    let collector = Collector::start(&[&gateway_log, &docker_glob]);

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-00"))
        .json(&chat("gpt-4o", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the retry answers");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // The usage line is written when the sink drains (off the request path).
    gw.usage_record(&rid).await;

    // Every line the gateway wrote reaches the collector, parsed (both read again on each poll: the
    // gateway may write more meanwhile).
    let (mut lines, mut records) = (Vec::new(), Vec::new());
    eventually(
        "the collector has every line of the gateway's log",
        Duration::from_secs(20),
        Some(&gw),
        || {
            lines = gw.log().lines().map(str::to_owned).collect::<Vec<_>>();
            records = collector.records();
            let all = records.len() == lines.len();
            async move { all }
        },
    )
    .await;
    for (line, record) in lines.iter().zip(&records) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_object(), "{line}");
        // The json_parser took it apart (a line that is not JSON would ship without attributes).
        assert_eq!(
            attr(record, "level"),
            v["level"].as_str(),
            "{record}\ncollector log:\n{}",
            collector.log()
        );
        assert!(record["timeUnixNano"].as_str().is_some(), "{record}");
    }

    // The request's lines, found by trace id: the same lines its request id finds in the file.
    let by_trace: Vec<&Value> = records.iter().filter(|r| r["traceId"] == TRACE).collect();
    let by_rid: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["request_id"] == rid.as_str())
        .collect();
    assert!(by_trace.len() >= 3, "{by_trace:#?}");
    assert_eq!(by_trace.len(), by_rid.len(), "{by_trace:#?}\n{by_rid:#?}");
    let span = by_trace[0]["spanId"].as_str().unwrap().to_string();
    assert_eq!(span.len(), 16);
    assert_ne!(span, CALLER_SPAN, "the proxy's own server span");
    for r in &by_trace {
        assert_eq!(attr(r, "trace_id"), Some(TRACE), "{r}");
        assert_eq!(attr(r, "span_id"), Some(span.as_str()), "{r}");
        assert_eq!(r["spanId"], span.as_str(), "{r}");
        assert_eq!(attr(r, "request_id"), Some(rid.as_str()), "{r}");
    }
    let messages: Vec<(&str, &str)> = by_trace
        .iter()
        .map(|r| {
            (
                r["severityText"].as_str().unwrap(),
                attr(r, "message").unwrap(),
            )
        })
        .collect();
    for expected in [
        ("WARN", "upstream attempt failed; a retry answered"),
        ("INFO", "request"),
        ("INFO", "usage"),
    ] {
        assert!(messages.contains(&expected), "{expected:?} in {messages:?}");
    }
    let retry = by_trace
        .iter()
        .find(|r| r["severityText"] == "WARN")
        .unwrap();
    assert_eq!(
        attr(retry, "failed_attempts"),
        Some("openai/a:503"),
        "{retry}"
    );

    // The same lines as Docker's json-file driver stores a container's stderr: unwrapped, then
    // parsed into the same records.
    let docker_log = docker_dir.join("0123abcd-json.log");
    let mut envelopes = String::new();
    for v in &by_rid {
        let line = format!("{v}\n");
        let e =
            serde_json::json!({"log": line, "stream": "stderr", "time": "2026-11-30T13:04:18.6Z"});
        envelopes.push_str(&format!("{e}\n"));
    }
    std::fs::write(&docker_log, envelopes).unwrap();
    let from_docker = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|r| attr(r, "log.file.name") == Some("0123abcd-json.log"))
            .cloned()
            .collect()
    };
    eventually(
        "the collector reads the Docker log",
        Duration::from_secs(20),
        Some(&gw),
        || {
            let done = from_docker(&collector.records()).len() >= by_rid.len();
            async move { done }
        },
    )
    .await;
    for r in from_docker(&collector.records()) {
        assert_eq!(r["traceId"], TRACE, "{r}");
        assert_eq!(r["spanId"], span.as_str(), "{r}");
        assert_eq!(attr(&r, "request_id"), Some(rid.as_str()), "{r}");
        assert_eq!(attr(&r, "log.iostream"), Some("stderr"), "{r}");
    }
}

/// The control plane's lines go through the same format and the same collector: every line it writes
/// (start-up, migrations, an audited API call, a refused one) is valid JSON and arrives parsed.
#[tokio::test]
async fn the_control_plane_s_json_lines_reach_the_collector() {
    let db = cp_common::fresh_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("control-plane.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args(["control-plane", "--log-format", "json", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--roles", "admin-api"])
        .env("LEAKY_DATABASE_URL", &db)
        .env("LEAKY_ADMIN_TOKEN", cp_common::TOKEN)
        // Nothing listens there: the forwarded usage call fails and warns inside its request span.
        .env("LEAKY_ANALYTICS_URL", "http://127.0.0.1:9")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    let collector = Collector::start(&[&log_path]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(
        "the control plane is ready",
        Duration::from_secs(30),
        None,
        || {
            let ready = http.get(format!("{base}/readyz")).send();
            async move { ready.await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    let created = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(cp_common::TOKEN)
        .json(&serde_json::json!({ "name": "logs" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let refused = http.get(format!("{base}/v1/orgs")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // A call whose handler logs (the analytics role is unreachable): its line carries the caller's
    // trace, the control plane's server span and the request id.
    let org = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let usage = http
        .get(format!("{base}/v1/orgs/{org}/usage"))
        .bearer_auth(cp_common::TOKEN)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "cp-logs-1")
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), 503);
    let (mut lines, mut records) = (Vec::new(), Vec::new());
    eventually(
        "the collector has every line",
        Duration::from_secs(20),
        None,
        || {
            lines = log().lines().map(str::to_owned).collect::<Vec<_>>();
            records = collector.records();
            let all = !lines.is_empty() && records.len() == lines.len();
            async move { all }
        },
    )
    .await;
    for (line, record) in lines.iter().zip(&records) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["target"].as_str().is_some(), "{line}");
        assert_eq!(attr(record, "level"), v["level"].as_str(), "{record}");
    }
    let by_trace: Vec<&Value> = records.iter().filter(|r| r["traceId"] == TRACE).collect();
    assert!(
        !by_trace.is_empty(),
        "no line of the usage call: {lines:#?}"
    );
    for r in &by_trace {
        assert_eq!(attr(r, "trace_id"), Some(TRACE), "{r}");
        assert_eq!(attr(r, "request_id"), Some("cp-logs-1"), "{r}");
        let span = attr(r, "span_id").unwrap();
        assert_eq!(r["spanId"], span, "{r}");
        assert_ne!(span, CALLER_SPAN, "the control plane's own server span");
    }
    assert!(
        by_trace
            .iter()
            .any(|r| attr(r, "message") == Some("analytics request failed")),
        "{by_trace:#?}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
