//! Qwen / DashScope stub: the native API under `/api/v1/services/...` and the
//! OpenAI-compatible mode under `/compatible-mode/v1/`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::common::{
    self, bearer, check_key, complete, forced_tokens, json_response, parse_object, request_seed,
    stream_response, ApiError, Completion, Dialect, Finish, Format, Pacer, SharedCtx,
};
use crate::gen::{self, mix, Hasher, Rng};
use crate::openai::{compat_routes, f32_json, finish_router, Flavor, ModelInfo};
use crate::tokens::{self, Tokenizer};
use crate::{Latency, StubOptions};

fn family(m: &str) -> bool {
    m.starts_with("qwen") || m.starts_with("text-embedding-v")
}

fn default_embed_dim(m: &str) -> Option<usize> {
    match m {
        "text-embedding-v1" | "text-embedding-v2" => Some(1536),
        m if m.starts_with("text-embedding-v") => Some(1024),
        _ => None,
    }
}

fn supports_dimensions(m: &str) -> bool {
    m.starts_with("text-embedding-v") && !matches!(m, "text-embedding-v1" | "text-embedding-v2")
}

pub static MODELS: [ModelInfo; 4] = [
    ModelInfo {
        id: "qwen-max",
        created: 1_727_000_000,
        embed_dim: None,
    },
    ModelInfo {
        id: "qwen-plus",
        created: 1_727_000_000,
        embed_dim: None,
    },
    ModelInfo {
        id: "qwen-turbo",
        created: 1_727_000_000,
        embed_dim: None,
    },
    ModelInfo {
        id: "text-embedding-v3",
        created: 1_727_000_000,
        embed_dim: Some(1024),
    },
];

/// DashScope's OpenAI-compatible mode.
pub static COMPAT: Flavor = Flavor {
    dialect: Dialect::DashScopeCompat,
    family,
    models: &MODELS,
    owned_by: "system",
    list_prefix: "",
    uuid_ids: true,
    fingerprint: false,
    rich_usage: false,
    goog_key: false,
    default_embed_dim,
    supports_dimensions,
    bpe: false,
};

/// Dimensions accepted by `text-embedding-v3`-style models.
const V3_DIMS: [u64; 6] = [1024, 768, 512, 256, 128, 64];

/// The Qwen / DashScope router.
pub fn router(latency: Latency) -> Router {
    router_with(&StubOptions::new(latency))
}

/// The router with faults, limits and a clock.
pub fn router_with(opts: &StubOptions) -> Router {
    let ctx = common::Ctx::new("qwen", Dialect::DashScope, opts);
    let api = compat_routes(&COMPAT, "/compatible-mode/v1")
        .route(
            "/api/v1/services/aigc/text-generation/generation",
            post(
                |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    match generation(&ctx, &headers, &body).await {
                        Ok(r) => r,
                        Err(e) => e.render(Dialect::DashScope),
                    }
                },
            ),
        )
        .route(
            "/api/v1/services/embeddings/text-embedding/text-embedding",
            post(
                |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    embedding(&ctx, &headers, &body)
                        .unwrap_or_else(|e| e.render(Dialect::DashScope))
                },
            ),
        );
    finish_router(api, ctx)
}

fn model(o: &Map<String, Value>) -> Result<&str, ApiError> {
    match o.get("model") {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "Required parameter \"model\" missing from request.",
        )),
        Some(Value::String(m)) if m.is_empty() => Err(ApiError::bad_request(
            "Required parameter \"model\" missing from request.",
        )),
        Some(Value::String(m)) => {
            if MODELS.iter().any(|x| x.id == m) || family(m) {
                Ok(m)
            } else {
                Err(ApiError::model_not_found(m))
            }
        }
        Some(_) => Err(ApiError::bad_request(
            "Input should be a valid string: model",
        )),
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    let sse = headers
        .get("x-dashscope-sse")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    sse || accept
}

enum Answer {
    Text(Completion),
    Tool {
        id: String,
        name: String,
        args: String,
        tokens: u64,
    },
}

impl Answer {
    fn tokens(&self) -> u64 {
        match self {
            Answer::Text(c) => c.tokens,
            Answer::Tool { tokens, .. } => *tokens,
        }
    }
    fn finish(&self) -> &'static str {
        match self {
            Answer::Text(c) if c.finish == Finish::Length => "length",
            Answer::Text(_) => "stop",
            Answer::Tool { .. } => "tool_calls",
        }
    }
}

fn param_u64(p: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("Input should be a valid integer: parameters.{key}"))
        }),
    }
}

fn param_bool(p: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_request(format!(
            "Input should be a valid boolean: parameters.{key}"
        ))),
    }
}

async fn generation(
    ctx: &SharedCtx,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    check_key(bearer(headers))?;
    let o = parse_object(body)?;
    model(&o)?;
    let input = match o.get("input") {
        Some(Value::Object(i)) => i,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "Either \"prompt\" or \"messages\" must exist and cannot both be none",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Input should be a valid dictionary: input",
            ))
        }
    };
    let owned_messages;
    let messages: &Vec<Value> = match (input.get("messages"), input.get("prompt")) {
        (Some(Value::Array(m)), _) if !m.is_empty() => {
            for (i, msg) in m.iter().enumerate() {
                let role = msg.get("role").and_then(Value::as_str);
                if !matches!(role, Some("system" | "user" | "assistant" | "tool")) {
                    return Err(ApiError::bad_request(format!(
                        "Role must be in [system, user, assistant, tool]: input.messages[{i}].role"
                    )));
                }
                match msg.get("content") {
                    Some(Value::String(_)) | Some(Value::Array(_)) => {}
                    None | Some(Value::Null) if role == Some("assistant") => {}
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "Input should be a valid string: input.messages[{i}].content"
                        )))
                    }
                }
            }
            m
        }
        (Some(Value::Array(_)), _) => {
            return Err(ApiError::bad_request(
                "Input should be a non-empty list: input.messages",
            ))
        }
        (Some(v), _) if !v.is_null() => {
            return Err(ApiError::bad_request(
                "Input should be a valid list: input.messages",
            ))
        }
        (_, Some(Value::String(p))) => {
            owned_messages = vec![json!({"role": "user", "content": p})];
            &owned_messages
        }
        (_, Some(v)) if !v.is_null() => {
            return Err(ApiError::bad_request(
                "Input should be a valid string: input.prompt",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "Either \"prompt\" or \"messages\" must exist and cannot both be none",
            ))
        }
    };
    let empty = Map::new();
    let params = match o.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Input should be a valid dictionary: parameters",
            ))
        }
    };
    let tools = match params.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Input should be a valid list: parameters.tools",
            ))
        }
    };
    let result_format = match params.get("result_format") {
        None | Some(Value::Null) => {
            if tools.is_some_and(|t| !t.is_empty()) {
                "message"
            } else {
                "text"
            }
        }
        Some(Value::String(s)) if s == "text" || s == "message" => s.as_str(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "result_format must be 'text' or 'message': parameters.result_format",
            ))
        }
    };
    let incremental = param_bool(params, "incremental_output")?.unwrap_or(false);
    let max = param_u64(params, "max_tokens")?;
    if max == Some(0) {
        return Err(ApiError::bad_request(
            "Range of max_tokens should be [1, 8192]",
        ));
    }
    let n = param_u64(params, "n")?.unwrap_or(1);
    if !(1..=4).contains(&n) {
        return Err(ApiError::bad_request("Range of n should be [1, 4]"));
    }
    let seed = match params.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::bad_request("Input should be a valid integer: parameters.seed")
        })?),
    };
    let stops = common::stop_list(params.get("stop"), "parameters.stop", 16)?;
    let format = match params
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_object") => Format::JsonObject,
        _ => Format::Text,
    };
    let forced = forced_tokens(headers)?;
    let prompt = tokens::chat(messages, params.get("tools"));
    let base = request_seed(&[&Value::Array(messages.clone())], seed);
    let last_role = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("user");
    let tool_choice_none = params.get("tool_choice").and_then(Value::as_str) == Some("none");

    let mut answers = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = if i == 0 {
            base
        } else {
            mix(base.wrapping_add(i))
        };
        let mut rng = Rng::new(s ^ 0x7001);
        let tool = match tools {
            Some(t) if !t.is_empty() && !tool_choice_none && last_role != "tool" => {
                t.get((rng.next_u64() % t.len() as u64) as usize)
            }
            _ => None,
        };
        if let Some(tool) = tool {
            let f = tool.get("function").unwrap_or(&Value::Null);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string();
            let schema = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let args = gen::value_from_schema(&schema, &mut rng, 0).to_string();
            let tokens = tokens::text(&name) + tokens::text(&args);
            answers.push(Answer::Tool {
                id: gen::id("call_", 24),
                name,
                args,
                tokens,
            });
        } else {
            answers.push(Answer::Text(complete(
                s,
                forced,
                max,
                &stops,
                &format,
                Tokenizer::Approx,
            )));
        }
    }
    let completion: u64 = answers.iter().map(Answer::tokens).sum();
    ctx.metrics.tokens(prompt, completion);
    let request_id = gen::uuid();
    let usage = |out: u64| json!({"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out});
    let message_output = |texts: &[(String, &str)]| -> Value {
        let choices: Vec<Value> = texts
            .iter()
            .zip(&answers)
            .map(|((t, finish), a)| {
                let message = match a {
                    Answer::Tool { id, name, args, .. } => json!({
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": name, "arguments": args}, "index": 0, "id": id, "type": "function"}]
                    }),
                    Answer::Text(_) => json!({"role": "assistant", "content": t}),
                };
                json!({"finish_reason": finish, "message": message})
            })
            .collect();
        json!({ "choices": choices })
    };
    let mut pacer = Pacer::new(ctx.latency, base);

    if !wants_sse(headers) {
        let output = if result_format == "message" {
            let texts: Vec<(String, &str)> = answers
                .iter()
                .map(|a| match a {
                    Answer::Text(c) => (c.text(), a.finish()),
                    Answer::Tool { .. } => (String::new(), a.finish()),
                })
                .collect();
            message_output(&texts)
        } else {
            let (text, finish) = match answers.first() {
                Some(Answer::Text(c)) => (c.text(), answers[0].finish()),
                _ => (String::new(), "stop"),
            };
            json!({"text": text, "finish_reason": finish})
        };
        common::delay(pacer.unary(completion / n)).await;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"output": output, "usage": usage(completion), "request_id": request_id}),
        ));
    }

    // SSE: one event per token of the first choice (DashScope streams one choice).
    let first = answers.first();
    let pieces: Vec<String> = match first {
        Some(Answer::Text(c)) => c.pieces.iter().map(|p| p.to_string()).collect(),
        _ => Vec::new(),
    };
    let finish = first.map(Answer::finish).unwrap_or("stop");
    let total_out = first.map(Answer::tokens).unwrap_or(0);
    let mut events: Vec<(Duration, Bytes)> = Vec::new();
    let mut acc = String::new();
    let mut out_so_far = 0u64;
    let event = |id: usize, text: &str, finish: &str, out: u64| -> Bytes {
        let output = if result_format == "message" {
            match first {
                Some(Answer::Tool { .. }) => message_output(&[(String::new(), finish)]),
                _ => {
                    json!({"choices": [{"message": {"content": text, "role": "assistant"}, "finish_reason": finish}]})
                }
            }
        } else {
            json!({"finish_reason": finish, "text": text})
        };
        let data = json!({"output": output, "usage": usage(out), "request_id": request_id});
        let mut b = format!("id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:").into_bytes();
        let _ = serde_json::to_writer(&mut b, &data);
        b.extend_from_slice(b"\n\n");
        Bytes::from(b)
    };
    let count = pieces.len();
    for (i, p) in pieces.iter().enumerate() {
        let d = if i == 0 { pacer.ttft() } else { pacer.inter() };
        acc.push_str(p);
        out_so_far = tokens::text(&acc);
        let last = i + 1 == count;
        let text = if incremental {
            p.as_str()
        } else {
            acc.as_str()
        };
        let fin = if last && !incremental { finish } else { "null" };
        events.push((d, event(i + 1, text, fin, out_so_far)));
    }
    if incremental || count == 0 {
        let d = if count == 0 {
            pacer.ttft()
        } else {
            Duration::ZERO
        };
        let text = if incremental { "" } else { acc.as_str() };
        events.push((d, event(count + 1, text, finish, total_out.max(out_so_far))));
    }
    Ok(stream_response("text/event-stream;charset=UTF-8", events))
}

fn embedding(ctx: &SharedCtx, headers: &HeaderMap, body: &Bytes) -> Result<Response, ApiError> {
    check_key(bearer(headers))?;
    let o = parse_object(body)?;
    let model = model(&o)?;
    let Some(full) = default_embed_dim(model) else {
        return Err(ApiError::model_not_found(model));
    };
    let texts: Vec<&str> = match o.get("input").and_then(|i| i.get("texts")) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 10 => a
            .iter()
            .map(|t| {
                t.as_str().ok_or_else(|| {
                    ApiError::bad_request("Input should be a valid string: input.texts")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(a)) if a.len() > 10 => return Err(ApiError::bad_request(
            "Value error, batch size is invalid, it should not be larger than 10.: input.contents",
        )),
        _ => {
            return Err(ApiError::bad_request(
                "Required parameter \"input.texts\" missing from request.",
            ))
        }
    };
    let dim = match o.get("parameters").and_then(|p| p.get("dimension")) {
        None | Some(Value::Null) => full,
        Some(v) => match v.as_u64() {
            Some(d) if supports_dimensions(model) && V3_DIMS.contains(&d) => d as usize,
            Some(d) if d as usize == full => full,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Value error, dimension should be one of {V3_DIMS:?}: parameters.dimension"
                )))
            }
        },
    };
    let mut total = 0;
    let embeddings: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            total += tokens::text(t);
            let mut v = gen::embedding(model, Hasher::default().str(t).finish(), full);
            if dim < full {
                v.truncate(dim);
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
            json!({"text_index": i, "embedding": v.iter().map(|x| f32_json(*x)).collect::<Vec<_>>()})
        })
        .collect();
    ctx.metrics.tokens(total, 0);
    Ok(json_response(
        StatusCode::OK,
        &json!({"output": {"embeddings": embeddings}, "usage": {"total_tokens": total}, "request_id": gen::uuid()}),
    ))
}
