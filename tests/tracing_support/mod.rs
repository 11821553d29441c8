//! A real Jaeger for the tracing tests: the one `scripts/test` runs (`LEAKY_TEST_JAEGER_OTLP`,
//! `LEAKY_TEST_JAEGER_QUERY`), or one started here through `scripts/lib/jaeger.sh` on free loopback
//! ports and stopped on drop; plus the query API calls the tests make.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Jaeger {
    /// OTLP/HTTP base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
    pub otlp: String,
    /// Query API base URL.
    pub query: String,
    /// Set when this process started Jaeger (stopped and removed on drop).
    own: Option<tempfile::TempDir>,
}

fn loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn jaeger_sh(call: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new("bash")
        .arg("-c")
        .arg(format!(". {root}/scripts/lib/jaeger.sh && {call}"))
        .output()
        .unwrap()
}

impl Jaeger {
    pub fn get() -> Jaeger {
        if let (Ok(otlp), Ok(query)) = (
            std::env::var("LEAKY_TEST_JAEGER_OTLP"),
            std::env::var("LEAKY_TEST_JAEGER_QUERY"),
        ) {
            return Jaeger {
                otlp,
                query,
                own: None,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let (q, g, h) = (loopback_port(), loopback_port(), loopback_port());
        let out = jaeger_sh(&format!(
            "jaeger_start {} {q} {g} {h}",
            dir.path().display()
        ));
        assert!(
            out.status.success(),
            "jaeger did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Jaeger {
            otlp: format!("http://127.0.0.1:{h}"),
            query: format!("http://127.0.0.1:{q}"),
            own: Some(dir),
        }
    }

    /// The traces of `service` with tag `key` = `value` (Jaeger's v1 query API, JSON).
    pub async fn traces(&self, service: &str, key: &str, value: &str) -> Vec<Value> {
        let tags = serde_json::json!({ key: value }).to_string();
        let r = reqwest::Client::new()
            .get(format!("{}/api/traces", self.query))
            .query(&[
                ("service", service),
                ("tags", tags.as_str()),
                ("lookback", "1h"),
                ("limit", "20"),
            ])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (up to 20 s) for exactly one trace of `service` tagged `leaky.request_id` = `rid`.
    pub async fn trace_of(&self, service: &str, rid: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.traces(service, "leaky.request_id", rid).await;
            if let [one] = &found[..] {
                // Spans of one trace can arrive in two batches: wait for the root's children too.
                if one["spans"].as_array().is_some_and(|s| s.len() > 1) {
                    return one.clone();
                }
            }
            assert!(found.len() <= 1, "{rid} has {} traces", found.len());
            assert!(Instant::now() < deadline, "no trace for {rid} in Jaeger");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            jaeger_sh(&format!("jaeger_stop {}", dir.path().display()));
        }
    }
}

/// The span of `trace` named `name` (panics if none).
pub fn span<'a>(trace: &'a Value, name: &str) -> &'a Value {
    spans(trace, name)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no span {name} in {trace:#}"))
}

pub fn spans<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["operationName"] == name)
        .collect()
}

/// The value of `span`'s tag `key`.
pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The span id `span` is a child of (its CHILD_OF reference), if any.
pub fn parent_of(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
}

/// A service name of its own per test, so tests sharing one Jaeger never see each other's traces.
pub fn service(test: &str) -> String {
    format!("leaky-proxy-{test}-{}", std::process::id())
}

impl Jaeger {
    /// The trace `trace_id` (32 hex digits) as Jaeger holds it now, if it has any span of it.
    pub async fn trace_by_id(&self, trace_id: &str) -> Option<Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/traces/{trace_id}", self.query))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        v["data"].as_array()?.first().cloned()
    }

    /// Waits (up to `secs`) until the trace `trace_id` satisfies `done`; returns it.
    pub async fn trace_until(
        &self,
        trace_id: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.trace_by_id(trace_id).await;
            if let Some(t) = t.as_ref().filter(|t| done(t)) {
                return t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} incomplete in Jaeger: {t:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The `service.name` of the process that reported `span` in `trace`.
pub fn service_of<'a>(trace: &'a Value, span: &Value) -> &'a str {
    let pid = span["processID"].as_str().unwrap_or_default();
    trace["processes"][pid]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

/// The spans of `trace` named `name` reported by `service`.
pub fn spans_of<'a>(trace: &'a Value, service: &str, name: &str) -> Vec<&'a Value> {
    spans(trace, name)
        .into_iter()
        .filter(|s| service_of(trace, s) == service)
        .collect()
}

impl Jaeger {
    /// Waits (up to 20 s) for the one trace of `service` tagged `leaky.request_id` = `rid`, however
    /// many spans it has.
    pub async fn only_trace_of(&self, service: &str, rid: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.traces(service, "leaky.request_id", rid).await;
            if let [one] = &found[..] {
                return one.clone();
            }
            assert!(found.len() <= 1, "{rid} has {} traces", found.len());
            assert!(Instant::now() < deadline, "no trace for {rid} in Jaeger");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A caller's trace: a fresh trace id and the caller's span id, so a test finds its trace by id.
pub struct Caller {
    pub trace: String,
    pub span: String,
}

impl Caller {
    pub fn new() -> Caller {
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        Caller { trace, span }
    }

    /// Its `traceparent` header value, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace, self.span)
    }
}

/// The control plane's admin API as the tracing tests call it: bearer `token`, calls traced or not.
pub struct Admin {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Admin {
    pub fn new(base: &str, token: &str) -> Admin {
        Admin {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// An authorized call to `path`.
    pub fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// An authorized call to `path` continuing `caller`'s (sampled) trace.
    pub fn traced(
        &self,
        method: reqwest::Method,
        path: &str,
        caller: &Caller,
    ) -> reqwest::RequestBuilder {
        self.call(method, path)
            .header("traceparent", caller.traceparent())
    }

    /// Creates an org named `name` (untraced); its id.
    pub async fn create_org(&self, name: &str) -> String {
        let r = self
            .call(reqwest::Method::POST, "/v1/orgs")
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let org: Value = r.json().await.unwrap();
        org["id"].as_str().unwrap().to_owned()
    }
}
