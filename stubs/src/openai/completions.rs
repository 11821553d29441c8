//! Legacy `/v1/completions`.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::{auth_headers, check_model, finish_str, stream_flags, OPENAI};
use crate::common::{
    self, complete, forced_tokens, json_response, opt_bool, opt_i64, opt_u64, parse_object,
    sse_data, stream_response, ApiError, Completion, Format, Pacer, SharedCtx,
};
use crate::gen::{self, mix, Hasher};

pub(super) async fn legacy_completions(
    ctx: &SharedCtx,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let fl = &OPENAI;
    auth_headers(fl, headers)?;
    let o = parse_object(body)?;
    let model = check_model(fl, &o)?;
    let tk = fl.tokenizer(model);
    // prompt: string | [string] | [int] | [[int]]
    let prompts: Vec<(String, u64)> = match o.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::missing("prompt")),
        Some(Value::String(s)) => vec![(s.clone(), tk.text(s))],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s.to_string(), tk.text(s)))
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) && !a.is_empty() => {
            vec![(Value::Array(a.clone()).to_string(), a.len() as u64)]
        }
        Some(Value::Array(a))
            if !a.is_empty()
                && a.iter()
                    .all(|x| x.as_array().is_some_and(|t| t.iter().all(Value::is_u64))) =>
        {
            a.iter()
                .map(|x| {
                    (
                        x.to_string(),
                        x.as_array().map(Vec::len).unwrap_or(0) as u64,
                    )
                })
                .collect()
        }
        Some(v) => return Err(ApiError::invalid_type("prompt", "a string or array", v)),
    };
    let (stream, include_usage) = stream_flags(&o)?;
    let n = opt_u64(&o, "n")?.unwrap_or(1).clamp(1, 128);
    let max = opt_u64(&o, "max_tokens")?.unwrap_or(16);
    let seed = opt_i64(&o, "seed")?;
    let echo = opt_bool(&o, "echo")?.unwrap_or(false);
    let stops = common::stop_list(o.get("stop"), "stop", 4)?;
    let forced = forced_tokens(headers)?;

    let mut prompt_tokens = 0;
    let mut answers: Vec<(String, Completion)> = Vec::new();
    for (p, t) in &prompts {
        prompt_tokens += t;
        let base = Hasher::default()
            .str(p)
            .u64(seed.unwrap_or(0) as u64)
            .finish();
        for j in 0..n {
            let s = if j == 0 {
                base
            } else {
                mix(base.wrapping_add(j))
            };
            answers.push((
                p.clone(),
                complete(s, forced, Some(max), &stops, &Format::Text, tk),
            ));
        }
    }
    let completion_tokens: u64 = answers.iter().map(|(_, c)| c.tokens).sum();
    ctx.metrics.tokens(prompt_tokens, completion_tokens);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = gen::id("cmpl-", 29);
    let created = gen::now_secs();
    let mut pacer = Pacer::new(ctx.latency, mix(prompt_tokens));
    if !stream {
        let choices: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, (p, c))| {
                let text = if echo { format!("{p}{}", c.text()) } else { c.text() };
                json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish_str(c.finish)})
            })
            .collect();
        common::delay(pacer.unary(completion_tokens / answers.len().max(1) as u64)).await;
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": "fp_stub0001",
                "choices": choices, "usage": usage,
            }),
        ));
    }
    let chunk = |i: usize, text: &str, finish: Option<&str>| -> Bytes {
        let mut c = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "fp_stub0001",
            "choices": [{"text": text, "index": i, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            if let Value::Object(m) = &mut c {
                m.insert("usage".into(), Value::Null);
            }
        }
        sse_data(&c)
    };
    let mut events = Vec::new();
    let mut d = pacer.ttft();
    if echo {
        for (i, (p, _)) in answers.iter().enumerate() {
            events.push((d, chunk(i, p, None)));
            d = Duration::ZERO;
        }
    }
    let steps = answers
        .iter()
        .map(|(_, c)| c.pieces.len())
        .max()
        .unwrap_or(0);
    for step in 0..steps {
        for (i, (_, c)) in answers.iter().enumerate() {
            if let Some(p) = c.pieces.get(step) {
                events.push((d, chunk(i, p, None)));
                d = Duration::ZERO;
            }
        }
        d = pacer.inter();
    }
    for (i, (_, c)) in answers.iter().enumerate() {
        events.push((Duration::ZERO, chunk(i, "", Some(finish_str(c.finish)))));
    }
    if include_usage {
        events.push((
            Duration::ZERO,
            sse_data(&json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": "fp_stub0001", "choices": [], "usage": usage,
            })),
        ));
    }
    events.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    Ok(stream_response("text/event-stream; charset=utf-8", events))
}
