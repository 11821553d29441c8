//! The Responses API (`/v1/responses`), unary and streaming.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::{auth_headers, check_model, OPENAI};
use crate::common::{
    self, complete, forced_tokens, json_response, opt_bool, opt_i64, opt_u64, parse_object,
    request_seed, stream_response, ApiError, Finish, Format, Pacer, SharedCtx,
};
use crate::gen;

/// The `input` (and `instructions`) of a Responses request as chat messages.
fn responses_messages(o: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let mut msgs = Vec::new();
    match o.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => msgs.push(json!({"role": "developer", "content": s})),
        Some(v) => return Err(ApiError::invalid_type("instructions", "a string", v)),
    }
    match o.get("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(Value::String(s)) => msgs.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let role = it.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = match it.get("content") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(parts)) => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p.get("text") {
                                Some(t) => json!({"type": "text", "text": t}),
                                None => p.clone(),
                            })
                            .collect(),
                    ),
                    Some(v) => {
                        return Err(ApiError::invalid_type(
                            &format!("input[{i}].content"),
                            "a string or array",
                            v,
                        ))
                    }
                    None => return Err(ApiError::missing(&format!("input[{i}].content"))),
                };
                msgs.push(json!({"role": role, "content": content}));
            }
        }
        Some(v) => return Err(ApiError::invalid_type("input", "a string or array", v)),
    }
    Ok(msgs)
}

pub(super) async fn responses(
    ctx: &SharedCtx,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let fl = &OPENAI;
    auth_headers(fl, headers)?;
    let o = parse_object(body)?;
    let model = check_model(fl, &o)?.to_string();
    let msgs = responses_messages(&o)?;
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let max = opt_u64(&o, "max_output_tokens")?;
    if max == Some(0) {
        return Err(ApiError::invalid_value(
            "max_output_tokens",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 0 instead.",
        ));
    }
    let seed = opt_i64(&o, "seed")?;
    let forced = forced_tokens(headers)?;
    let tk = fl.tokenizer(&model);
    let input_tokens = tk.chat(&msgs, None);
    let base_seed = request_seed(&[o.get("input").unwrap_or(&Value::Null)], seed);
    let c = complete(base_seed, forced, max, &[], &Format::Text, tk);
    let output_tokens = c.tokens;
    ctx.metrics.tokens(input_tokens, output_tokens);
    let text = c.text();
    let resp_id = gen::id("resp_", 48);
    let msg_id = gen::id("msg_", 48);
    let created = gen::now_secs();
    let incomplete = c.finish == Finish::Length;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let item = |status: &str, text: Option<&str>| -> Value {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content})
    };
    let response = |status: &str, output: Value, usage: Value| -> Value {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": o.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": max,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    };
    let final_status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    let item_status = final_status;
    let mut pacer = Pacer::new(ctx.latency, base_seed);
    if !stream {
        let body = response(final_status, json!([item(item_status, Some(&text))]), usage);
        common::delay(pacer.unary(output_tokens)).await;
        return Ok(json_response(StatusCode::OK, &body));
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut v: Value| -> Bytes {
        if let Value::Object(m) = &mut v {
            m.insert("type".into(), Value::String(name.to_string()));
            m.insert("sequence_number".into(), Value::from(seq));
        }
        seq += 1;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut out, &v);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    };
    let mut events: Vec<(Duration, Bytes)> = Vec::with_capacity(c.pieces.len() + 8);
    let started = response("in_progress", json!([]), Value::Null);
    events.push((
        pacer.ttft(),
        ev("response.created", json!({"response": started})),
    ));
    events.push((
        Duration::ZERO,
        ev("response.in_progress", json!({"response": started})),
    ));
    events.push((
        Duration::ZERO,
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": item("in_progress", None)}),
        ),
    ));
    events.push((
        Duration::ZERO,
        ev(
            "response.content_part.added",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ),
    ));
    for p in &c.pieces {
        events.push((
            pacer.inter(),
            ev("response.output_text.delta", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": p, "logprobs": []})),
        ));
    }
    events.push((
        Duration::ZERO,
        ev("response.output_text.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})),
    ));
    events.push((
        Duration::ZERO,
        ev(
            "response.content_part.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
        ),
    ));
    events.push((
        Duration::ZERO,
        ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": item(item_status, Some(&text))}),
        ),
    ));
    let done = response(final_status, json!([item(item_status, Some(&text))]), usage);
    let done_name = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push((Duration::ZERO, ev(done_name, json!({"response": done}))));
    Ok(stream_response("text/event-stream; charset=utf-8", events))
}
