//! Request traces end to end: the real binary exports over OTLP/HTTP into a real Jaeger, and the tests
//! find each request's trace through Jaeger's query API by its request id (phase spans, GenAI
//! attributes, the caller's trace continued, the upstream told), that error traces are kept at a
//! sampling ratio of 0 while successful unsampled ones are not, and that the drop counter exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{chat, Gateway, Upstreams, PRO_KEY};
use crate::tracing_support::{parent_of, service, span, spans, tag, Caller, Jaeger};
use serde_json::Value;

/// A gateway tracing into `jaeger` as `service`, head sampling at `ratio`.
async fn gateway(up: &Upstreams, jaeger: &Jaeger, service: &str, ratio: &str) -> Gateway {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()),
        ("OTEL_TRACES_SAMPLER_ARG", ratio),
        ("OTEL_SERVICE_NAME", service),
    ];
    // With `rate-limit` in the chain the routes meter tokens, so the settled usage becomes the
    // GenAI usage attributes.
    let config = up.config("").replacen(
        "      - kind: api-key\n",
        "      - kind: api-key\n      - kind: rate-limit\n",
        1,
    );
    Gateway::start_with(&config, &env).await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_request_continues_the_callers_trace_with_phase_spans_and_genai_attributes() {
    let jaeger = Jaeger::get();
    let up = Upstreams::start().await;
    let svc = service("phases");
    // Ratio 0: the caller's sampled flag alone keeps this trace (parent-based head sampling).
    let gw = gateway(&up, &jaeger, &svc, "0").await;
    // A trace of its own: the tests share one Jaeger, and a trace id two tests sent would gather
    // both tests' spans into one trace.
    let caller = Caller::new();
    let rid = unique("trace-ok");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .header("x-request-id", &rid)
        .header("traceparent", caller.traceparent())
        .json(&chat("gpt-4o-mini", "hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let trace = jaeger.trace_of(&svc, &rid).await;
    assert_eq!(trace["traceID"], caller.trace, "the caller's trace goes on");
    let root = span(&trace, "POST v1");
    assert_eq!(parent_of(root), Some(caller.span.as_str()), "{root:#}");
    let root_id = root["spanID"].as_str().unwrap();
    for phase in ["auth", "limit.reserve", "upstream.attempt", "settle"] {
        let s = span(&trace, phase);
        assert_eq!(
            parent_of(s),
            Some(root_id),
            "{phase} is a child of the request"
        );
    }
    let s = |k: &str| tag(root, k).cloned().unwrap_or(Value::Null);
    assert_eq!(s("leaky.request_id"), rid.as_str());
    assert_eq!(s("leaky.org"), "acme");
    assert_eq!(s("gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(s("gen_ai.response.model"), "gpt-4o-mini");
    assert_eq!(s("gen_ai.provider.name"), "openai");
    assert_eq!(s("http.response.status_code"), 200);
    assert!(
        s("gen_ai.usage.input_tokens").as_i64().unwrap() > 0,
        "{root:#}"
    );
    assert!(
        s("gen_ai.usage.output_tokens").as_i64().unwrap() > 0,
        "{root:#}"
    );
    let attempt = span(&trace, "upstream.attempt");
    assert_eq!(tag(attempt, "leaky.upstream.outcome").unwrap(), "200");
    assert!(
        tag(attempt, "leaky.upstream.ttft_ms")
            .unwrap()
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(
        attempt["logs"].as_array().is_some_and(|l| !l.is_empty()),
        "first_byte event"
    );
    // The access log line names the trace.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains(&rid) && l.contains("\"target\":\"access\""))
        .unwrap_or_else(|| panic!("no access line for {rid}:\n{log}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["trace_id"], caller.trace);
    assert_eq!(v["span_id"], root_id);
}

#[tokio::test]
async fn the_upstream_receives_the_attempt_spans_traceparent() {
    let jaeger = Jaeger::get();
    let up = Upstreams::start().await;
    let svc = service("propagate");
    let gw = gateway(&up, &jaeger, &svc, "1").await;
    let caller = Caller::new();
    let rid = unique("trace-up");
    let r = gw
        .client
        .post(gw.url("/capture/things"))
        .header("x-goog-api-key", PRO_KEY)
        .header("x-request-id", &rid)
        .header("traceparent", caller.traceparent())
        .json(&serde_json::json!({"model": "capture-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    // One `traceparent` upstream: the attempt's, in place of the caller's.
    assert!(
        !echoed["repeated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "traceparent"),
        "{echoed:#}"
    );
    let tp = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let trace = jaeger.trace_of(&svc, &rid).await;
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], caller.trace, "the caller's trace goes upstream");
    assert_eq!(
        parts[1],
        trace["traceID"].as_str().unwrap(),
        "same trace upstream"
    );
    assert_ne!(parts[2], caller.span, "not the caller's span");
    assert_eq!(parts[3], "01", "sampled at ratio 1");
    // One attempt in the trace: its spans are this request's alone.
    let attempts = spans(&trace, "upstream.attempt");
    assert_eq!(attempts.len(), 1, "{trace:#}");
    let attempt = attempts[0];
    assert_eq!(
        parts[2],
        attempt["spanID"].as_str().unwrap(),
        "the upstream's parent is the attempt"
    );
}

#[tokio::test]
async fn errors_are_kept_at_ratio_zero_and_unsampled_successes_are_not() {
    let jaeger = Jaeger::get();
    let up = Upstreams::start().await;
    let svc = service("errors");
    let gw = gateway(&up, &jaeger, &svc, "0").await;
    let ok_rid = unique("trace-unsampled");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .header("x-request-id", &ok_rid)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err_rid = unique("trace-error");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("lt-wrong-key")
        .header("x-request-id", &err_rid)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The error's trace: root plus the auth phase that refused it.
    let trace = jaeger.trace_of(&svc, &err_rid).await;
    let root = span(&trace, "POST v1");
    assert_eq!(tag(root, "http.response.status_code").unwrap(), 401);
    assert_eq!(tag(root, "error.type").unwrap(), "401");
    assert_eq!(spans(&trace, "auth").len(), 1);
    assert!(spans(&trace, "upstream.attempt").is_empty());
    // Records leave in request order through one queue: had the success been kept, it would be in
    // Jaeger by now.
    assert!(jaeger
        .traces(&svc, "leaky.request_id", &ok_rid)
        .await
        .is_empty());
    let dropped = gw
        .admin_text("/metrics")
        .await
        .lines()
        .any(|l| l.starts_with("# TYPE leaky_trace_spans_dropped_total counter"));
    assert!(dropped, "the drop counter is exported");
}
