//! Helpers of `usage_stubs.rs`: the stubs in-process, requests, the tracker fed in small chunks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;

use leaky_config::Dialect;
use leaky_stubs::{BoundStubs, Latency, StubsConfig};
use leaky_usage::{estimate, with_include_usage, Chunk, Surface, Usage, UsageTracker};
use serde_json::Value;

pub async fn stubs() -> BoundStubs {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = StubsConfig {
        openai: any,
        gemini: any,
        qwen: any,
        latency: Latency::Off,
        ..StubsConfig::default()
    };
    let (bound, serve) = leaky_stubs::bind(cfg).await.unwrap();
    tokio::spawn(serve);
    bound
}

pub struct Call {
    pub dialect: Dialect,
    pub addr: SocketAddr,
    pub path: &'static str,
    pub model: &'static str,
    pub body: Value,
    pub sse_header: bool,
}

pub struct Answer {
    pub raw: Vec<u8>,
    pub event_stream: bool,
}

pub async fn send(c: &Call, body: &[u8]) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{}", c.addr, c.path))
        .header("authorization", "Bearer sk-test")
        .header("x-goog-api-key", "k")
        .header("content-type", "application/json")
        .body(body.to_vec());
    if c.sse_header {
        req = req.header("X-DashScope-SSE", "enable");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", c.path);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    Answer {
        raw: resp.bytes().await.unwrap().to_vec(),
        event_stream: ct.starts_with("text/event-stream"),
    }
}

/// Deterministic chunk sizes in 1..=16.
pub fn sizes(seed: u64) -> Vec<usize> {
    let mut x = seed;
    (0..97)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1 + (x >> 59) as usize % 16
        })
        .collect()
}

pub fn track(mut t: UsageTracker, raw: &[u8], seed: u64, estimate: u64) -> (Vec<u8>, Usage) {
    let mut out = Vec::new();
    let mut rest = raw;
    for n in sizes(seed).into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (c, r) = rest.split_at(n.min(rest.len()));
        match t.on_chunk(c) {
            Chunk::Pass => out.extend_from_slice(c),
            Chunk::Replace(b) => out.extend_from_slice(&b),
        }
        rest = r;
    }
    out.extend_from_slice(&t.on_end());
    (out, t.finish(estimate))
}

/// The usage a non-streaming JSON answer reports, read independently of the tracker.
pub fn json_usage(v: &Value) -> (u64, u64) {
    if let Some(last) = v.as_array().and_then(|a| a.last()) {
        return json_usage(last); // Gemini streamGenerateContent without alt=sse
    }
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(u) = v.get("usageMetadata") {
        return (
            n(u, "promptTokenCount").unwrap(),
            n(u, "candidatesTokenCount").unwrap_or(0),
        );
    }
    let u = &v["usage"];
    match (n(u, "prompt_tokens"), n(u, "input_tokens")) {
        (Some(p), _) => (p, n(u, "completion_tokens").unwrap_or(0)),
        (None, Some(p)) => (p, n(u, "output_tokens").unwrap()),
        _ => (
            n(u, "total_tokens").unwrap_or_else(|| panic!("no usage: {v}")),
            0,
        ),
    }
}

/// Runs `c` non-streaming (the reference usage), then as `stream_body` streaming, and checks
/// the tracker against it. Returns the reference usage.
pub async fn check(c: Call, stream_body: Option<Value>, seed: u64) -> (u64, u64) {
    let surface = Surface::classify(c.dialect, c.path);
    let bytes = c.body.to_string().into_bytes();
    let cost = estimate(surface, c.model, &bytes, c.sse_header);
    let a = send(&c, &bytes).await;
    let reference = if a.event_stream {
        None
    } else {
        let v: Value = serde_json::from_slice(&a.raw).unwrap();
        Some(json_usage(&v))
    };
    let t = UsageTracker::new(surface, c.model, a.event_stream, false)
        .incremental_output(cost.incremental);
    let (out, u) = track(t, &a.raw, seed, cost.prompt_tokens);
    assert_eq!(out, a.raw, "{}: unchanged", c.path);
    let reference = reference.unwrap_or((u.prompt_tokens, u.completion_tokens));
    assert!(u.reported, "{}: {u:?}", c.path);
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens),
        reference,
        "{}",
        c.path
    );
    let Some(sb) = stream_body else {
        return reference;
    };
    let sbytes = sb.to_string().into_bytes();
    let cost = estimate(surface, c.model, &sbytes, c.sse_header);
    assert!(cost.stream, "{}", c.path);
    let injected = with_include_usage(&sbytes);
    let strip = injected.is_some();
    let a = send(&c, injected.as_deref().unwrap_or(&sbytes)).await;
    let t = UsageTracker::new(surface, c.model, a.event_stream, strip)
        .incremental_output(cost.incremental);
    let (out, u) = track(t, &a.raw, seed + 1, cost.prompt_tokens);
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.reported),
        (reference.0, reference.1, true),
        "{} stream",
        c.path
    );
    if strip {
        check_stripped(&a.raw, &out);
    } else {
        assert_eq!(out, a.raw);
    }
    reference
}

/// The stripped stream is the raw one minus exactly the usage chunk, still ends with [DONE].
pub fn check_stripped(raw: &[u8], out: &[u8]) {
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    let out = String::from_utf8(out.to_vec()).unwrap();
    let events: Vec<&str> = raw.split_inclusive("\n\n").collect();
    let usage: Vec<&&str> = events
        .iter()
        .filter(|e| e.contains("\"choices\":[]"))
        .collect();
    assert_eq!(usage.len(), 1, "{raw}");
    assert_eq!(out, raw.replacen(usage[0], "", 1));
    assert!(out.ends_with("data: [DONE]\n\n"));
    for e in out.split_inclusive("\n\n") {
        let d = e.trim().strip_prefix("data: ").unwrap();
        if d != "[DONE]" {
            let v: Value = serde_json::from_str(d).unwrap();
            assert!(!v["choices"].as_array().unwrap().is_empty());
        }
    }
}

pub fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}
