//! Cross-service traces end to end (issue 17): the real binary as proxy, control plane and analytics,
//! on a real PostgreSQL, a Kafka broker of this test's own, a real Cassandra and a real Jaeger. Each
//! test sends a request with a known `traceparent` and finds the whole trace in Jaeger's query API by
//! that trace id: a proxied request's usage event continued by the ledger's and analytics' consumers;
//! an admin call's Postgres transaction and its outbox event through the relay into a control-plane
//! consumer; a control-plane call forwarded to analytics; and a failed call kept at a sampling ratio
//! of 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::cassandra;
use crate::pg as cp;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{chat, free_port, sha256_hex, Gateway, Upstreams, PRO_KEY};
use crate::tracing_support::{parent_of, service, spans_of, tag, Admin, Caller, Jaeger};
use reqwest::Method;
use serde_json::{json, Value};

/// A Kafka broker of this test's own (`scripts/lib/kafka.sh`): the control plane's consumer groups
/// have fixed names, which another test's control plane on a shared broker would join.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        kafka_sh("kafka_start", dir.path(), port);
        Broker { dir, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        kafka_sh("kafka_stop", self.dir.path(), self.port);
    }
}

fn kafka_sh(cmd: &str, dir: &Path, port: u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/kafka.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && {cmd} \"$0\" \"$1\"", script.display()))
        .arg(dir)
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed on drop, its stderr in `log`.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let port = free_port().port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args(["--log-format", "json"])
            .args(args)
            .args(["--listen", &listen])
            // The analytics API stays open (the control plane sends no token) whatever the shell has.
            .env_remove("LEAKY_ANALYTICS_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            log,
            base: format!("http://{listen}"),
            _dir: dir,
        }
    }

    /// The admin API of this control plane.
    fn admin(&self) -> Admin {
        Admin::new(&self.base, cp::TOKEN)
    }

    async fn wait_http(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let http = reqwest::Client::new();
        loop {
            let r = http.get(format!("{}{path}", self.base)).send().await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                return;
            }
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(Instant::now() < deadline, "{path} never answered:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The OTel environment of one traced process.
fn otel<'a>(jaeger: &'a Jaeger, service: &'a str, ratio: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()),
        ("OTEL_TRACES_SAMPLER_ARG", ratio),
        ("OTEL_SERVICE_NAME", service),
    ]
}

/// A control plane (admin API; with `extra` naming brokers, the relay and the ledger and
/// notification consumers too) on a fresh database, tracing as `svc` at ratio 0, ready.
async fn control_plane(jaeger: &Jaeger, svc: &str, extra: &[(&str, &str)]) -> Proc {
    let db = cp::fresh_db().await.unwrap();
    let mut env = vec![
        ("LEAKY_DATABASE_URL", db.as_str()),
        ("LEAKY_ADMIN_TOKEN", cp::TOKEN),
    ];
    env.extend_from_slice(extra);
    env.extend(otel(jaeger, svc, "0"));
    let p = Proc::spawn(&["control-plane", "--roles", "admin-api"], &env);
    p.wait_http("/readyz").await;
    p
}

/// The control plane's environment for `brokers` and the analytics API at `analytics`.
fn wired<'a>(brokers: &'a str, analytics: &'a str) -> [(&'a str, &'a str); 2] {
    [
        ("LEAKY_KAFKA_BROKERS", brokers),
        ("LEAKY_ANALYTICS_URL", analytics),
    ]
}

/// Analytics on the usage topic, tracing as `svc`, in a keyspace and group of its own.
fn analytics(jaeger: &Jaeger, svc: &str, brokers: &str) -> Proc {
    let node = cassandra::node().unwrap();
    let ks = cassandra::keyspace("tracing");
    let group = format!("tracing-{}", uuid::Uuid::new_v4().simple());
    let args = [
        "analytics",
        "--kafka",
        brokers,
        "--cassandra",
        &node,
        "--keyspace",
        &ks,
        "--group",
        &group,
        "--linger-ms",
        "50",
    ];
    let mut env = otel(jaeger, svc, "0").to_vec();
    // The consumer's per-event and per-batch lines are debug lines.
    env.push(("LEAKY_LOG", "info,leaky_analytics=debug"));
    Proc::spawn(&args, &env)
}

async fn create_topics(brokers: &str) {
    for t in [
        leaky_wire::event::USAGE_TOPIC,
        "leaky.ledger.v1",
        "leaky.tenancy.v1",
        "leaky.billing.v1",
    ] {
        cp::kafka::topic_named(brokers, t, 1).await.unwrap();
    }
}

/// The gateway: `/v1` to the OpenAI stub, metered, publishing usage events to `brokers`.
fn gateway_config(up: &Upstreams, brokers: &str) -> String {
    format!(
        r#"providers:
  openai:
    base_url: http://{openai}
    credential: sk-test
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
tiers:
  pro:
    limits:
      - {{ name: day, unit: tokens, quota: daily, limit: 10000000 }}
keys:
  - {{ id: test-pro, sha256: {key}, user: alice, org: acme, tier: pro }}
events:
  kafka:
    brokers: ["{brokers}"]
    topic: {topic}
"#,
        openai = up.stubs.openai,
        key = sha256_hex(PRO_KEY.as_bytes()),
        topic = leaky_wire::event::USAGE_TOPIC,
    )
}

fn span_id(s: &Value) -> &str {
    s["spanID"].as_str().unwrap()
}

#[tokio::test]
async fn a_proxied_request_is_one_trace_with_the_ledger_and_analytics_consumers() {
    let jaeger = Jaeger::get();
    let broker = Broker::start();
    let brokers = broker.addr();
    create_topics(&brokers).await;
    let (px, cps, an) = (service("px"), service("cp"), service("an"));
    let an_proc = analytics(&jaeger, &an, &brokers);
    let cp_proc = control_plane(&jaeger, &cps, &wired(&brokers, &an_proc.base)).await;
    an_proc.wait_http("/healthz").await;
    let up = Upstreams::start().await;
    let gw = Gateway::start_with(&gateway_config(&up, &brokers), &otel(&jaeger, &px, "0")).await;
    let caller = Caller::new();
    let (trace, caller_span) = (&caller.trace, caller.span.as_str());
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .header("x-request-id", format!("svc-{trace}"))
        .header("traceparent", caller.traceparent())
        .json(&chat("gpt-4o-mini", "hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = jaeger
        .trace_until(trace, 90, |t| {
            !spans_of(t, &px, "POST v1").is_empty()
                && !spans_of(t, &cps, "consume").is_empty()
                && !spans_of(t, &an, "analytics.consume").is_empty()
        })
        .await;
    let root = spans_of(&t, &px, "POST v1")[0];
    assert_eq!(parent_of(root), Some(caller_span));
    // The usage event's header names the proxy's server span: both consumers are its children.
    let ledger = spans_of(&t, &cps, "consume")[0];
    assert_eq!(parent_of(ledger), Some(span_id(root)), "{ledger:#}");
    assert_eq!(
        tag(ledger, "messaging.consumer.group.name").unwrap(),
        "leaky-ledger"
    );
    assert_eq!(
        spans_of(&t, &cps, "db.transaction").len(),
        1,
        "the debit's transaction"
    );
    let stored = spans_of(&t, &an, "analytics.consume")[0];
    assert_eq!(parent_of(stored), Some(span_id(root)), "{stored:#}");
    assert_eq!(
        tag(stored, "messaging.destination.name").unwrap(),
        leaky_wire::event::USAGE_TOPIC
    );
    analytics_lines(&an_proc, &format!("svc-{trace}"), stored);
    forwarded_usage_query(&jaeger, &cp_proc.admin(), &cps, &an).await;
}

/// The analytics role's JSON lines about the stored event: found by the request's id, each with the
/// consuming batch's `trace_id` and `span_id` — the batch span that `stored` (the event's span in
/// the request's trace) links to — and the batch's own line with the same ids.
fn analytics_lines(an: &Proc, request_id: &str, stored: &Value) {
    let text = std::fs::read_to_string(&an.log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = lines
        .iter()
        .find(|l| l["message"] == "usage event stored" && l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no line for {request_id}:\n{text}"));
    let (trace, span) = (
        event["trace_id"].as_str().unwrap(),
        event["span_id"].as_str().unwrap(),
    );
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{event}"
    );
    assert!(
        span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit()),
        "{event}"
    );
    let links: Vec<&str> = stored["references"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["refType"] != "CHILD_OF")
        .filter_map(|r| r["spanID"].as_str())
        .collect();
    assert!(links.contains(&span), "{stored:#} links no span {span}");
    assert!(
        lines.iter().any(|l| l["message"] == "usage batch stored"
            && l["trace_id"] == trace
            && l["span_id"] == span),
        "no batch line with the event's ids:\n{text}"
    );
}

/// A control-plane usage query forwarded to analytics: the analytics server span is a child of the
/// control plane's client span, in the caller's trace.
async fn forwarded_usage_query(jaeger: &Jaeger, admin: &Admin, cps: &str, an: &str) {
    let org = admin.create_org("traced").await;
    let caller = Caller::new();
    let r = admin
        .traced(Method::GET, &format!("/v1/orgs/{org}/usage"), &caller)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let t = jaeger
        .trace_until(&caller.trace, 30, |t| {
            !spans_of(t, an, "GET /v1/orgs/{org}/usage").is_empty()
                && !spans_of(t, cps, "GET /v1/orgs/{org}/usage").is_empty()
        })
        .await;
    let server = spans_of(&t, cps, "GET /v1/orgs/{org}/usage")[0];
    assert_eq!(parent_of(server), Some(caller.span.as_str()));
    assert_eq!(tag(server, "http.route").unwrap(), "/v1/orgs/{org}/usage");
    let client = spans_of(&t, cps, "GET analytics")[0];
    assert_eq!(parent_of(client), Some(span_id(server)));
    let analytics = spans_of(&t, an, "GET /v1/orgs/{org}/usage")[0];
    assert_eq!(parent_of(analytics), Some(span_id(client)));
}

#[tokio::test]
async fn an_admin_call_is_one_trace_through_the_outbox_relay_and_a_consumer() {
    let jaeger = Jaeger::get();
    let broker = Broker::start();
    let brokers = broker.addr();
    create_topics(&brokers).await;
    let cps = service("cp-outbox");
    let cp_proc = control_plane(&jaeger, &cps, &wired(&brokers, "http://127.0.0.1:9")).await;
    let admin = cp_proc.admin();
    let org = admin.create_org("granted").await;
    let caller = Caller::new();
    let r = admin
        .traced(Method::POST, &format!("/v1/orgs/{org}/grants"), &caller)
        .header("idempotency-key", format!("grant-{}", caller.trace))
        .json(&json!({ "tokens": 1000, "reason": "traced grant" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // The grant's ledger event: appended in the request's transaction, published by the relay, and
    // consumed by the notification consumer of the ledger topic — all in the caller's trace.
    let on_ledger = |t: &Value| {
        spans_of(t, &cps, "consume")
            .into_iter()
            .find(|s| tag(s, "messaging.destination.name").is_some_and(|d| d == "leaky.ledger.v1"))
            .map(|s| s["spanID"].as_str().unwrap().to_owned())
    };
    let t = jaeger
        .trace_until(&caller.trace, 60, |t| on_ledger(t).is_some())
        .await;
    let server = spans_of(&t, &cps, "POST /v1/orgs/{org}/grants")[0];
    assert_eq!(parent_of(server), Some(caller.span.as_str()));
    // The handler's Postgres transaction: a client span under the server span, named for how it
    // ended, with the database conventions and where it began.
    let tx = spans_of(&t, &cps, "COMMIT")
        .into_iter()
        .find(|s| parent_of(s) == Some(span_id(server)))
        .unwrap_or_else(|| panic!("the grant's transaction span: {t:#}"));
    assert_eq!(tag(tx, "span.kind").unwrap(), "client");
    assert_eq!(tag(tx, "db.system.name").unwrap(), "postgresql");
    assert_eq!(tag(tx, "db.operation.name").unwrap(), "COMMIT");
    let began = tag(tx, "code.file.path").unwrap().as_str().unwrap();
    assert!(began.ends_with("src/ledger/api.rs"), "{began}");
    let consume_id = on_ledger(&t).unwrap();
    let consume = t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spanID"] == consume_id.as_str())
        .unwrap();
    let relay = spans_of(&t, &cps, "outbox.relay")
        .into_iter()
        .find(|s| Some(span_id(s)) == parent_of(consume))
        .unwrap_or_else(|| panic!("the consumer's parent is a relay span: {t:#}"));
    assert_eq!(
        tag(relay, "messaging.destination.name").unwrap(),
        "leaky.ledger.v1"
    );
    let append = spans_of(&t, &cps, "outbox.append")
        .into_iter()
        .find(|s| Some(span_id(s)) == parent_of(relay))
        .unwrap_or_else(|| panic!("the relay's parent is an append span: {t:#}"));
    assert_eq!(parent_of(append), Some(span_id(server)));
}

#[tokio::test]
async fn a_failed_call_is_kept_at_ratio_zero_and_a_success_is_not() {
    let jaeger = Jaeger::get();
    let cps = service("cp-errors");
    let cp_proc = control_plane(&jaeger, &cps, &[]).await;
    let admin = cp_proc.admin();
    let ok = format!("ok-{}", uuid::Uuid::new_v4().simple());
    let r = admin
        .call(Method::GET, "/v1/orgs")
        .header("x-request-id", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let missing = format!("missing-{}", uuid::Uuid::new_v4().simple());
    let r = admin
        .call(Method::GET, &format!("/v1/orgs/{}", uuid::Uuid::new_v4()))
        .header("x-request-id", &missing)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let t = jaeger.only_trace_of(&cps, &missing).await;
    let root = spans_of(&t, &cps, "GET /v1/orgs/{org}")[0];
    assert_eq!(tag(root, "http.response.status_code").unwrap(), 404);
    assert_eq!(tag(root, "error.type").unwrap(), "404");
    assert_eq!(tag(root, "leaky.request_id").unwrap(), missing.as_str());
    // Units leave through one queue in order: had the success been kept, it would be there by now.
    assert!(jaeger
        .traces(&cps, "leaky.request_id", &ok)
        .await
        .is_empty());
    let metrics = admin
        .http
        .get(format!("{}/metrics", cp_proc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("leaky_trace_spans_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_flushes_the_spans_still_queued() {
    let jaeger = Jaeger::get();
    let cps = service("cp-flush");
    let mut cp_proc = control_plane(&jaeger, &cps, &[]).await;
    let caller = Caller::new();
    let r = cp_proc
        .admin()
        .traced(Method::GET, "/v1/orgs", &caller)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // At once: the exporter gathers units for 500 ms before a batch, so only the shutdown flush can
    // have sent this one by the time the process is gone.
    let term = Command::new("kill")
        .args(["-TERM", &cp_proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = cp_proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the control plane did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let t = jaeger
        .trace_until(&caller.trace, 10, |t| {
            !spans_of(t, &cps, "GET /v1/orgs").is_empty()
        })
        .await;
    assert_eq!(
        parent_of(spans_of(&t, &cps, "GET /v1/orgs")[0]),
        Some(caller.span.as_str())
    );
}
