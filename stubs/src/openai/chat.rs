//! `chat/completions`: generated answers (text or tool calls), unary and
//! streaming bodies, usage.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use super::messages::{pick_tool, response_format, validate_messages};
use super::{auth_headers, check_model, finish_str, stream_flags, Flavor};
use crate::common::{
    self, complete, forced_tokens, opt_i64, opt_number, opt_u64, parse_object, request_seed,
    sse_data, stream_response, ApiError, Completion, Pacer, SharedCtx,
};
use crate::gen::{self, mix, Rng};

/// One generated choice.
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
            Answer::Text(c) => finish_str(c.finish),
            Answer::Tool { .. } => "tool_calls",
        }
    }
    /// Stream pieces (content or argument fragments).
    fn pieces(&self) -> Vec<String> {
        match self {
            Answer::Text(c) => c.pieces.iter().map(|p| p.to_string()).collect(),
            Answer::Tool { args, .. } => {
                let chars: Vec<char> = args.chars().collect();
                chars.chunks(4).map(|c| c.iter().collect()).collect()
            }
        }
    }
}

fn usage(fl: &Flavor, prompt: u64, completion: u64) -> Value {
    if fl.rich_usage {
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        })
    } else {
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        })
    }
}

#[derive(Serialize)]
struct ChatOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    usage: UsageOut,
    service_tier: &'static str,
    system_fingerprint: Option<&'static str>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: usize,
    message: MessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

impl UsageOut {
    /// The same object as [`usage`], typed.
    fn new(fl: &Flavor, prompt: u64, completion: u64) -> Self {
        UsageOut {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: fl.rich_usage.then_some(PromptDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            }),
            completion_tokens_details: fl.rich_usage.then_some(CompletionDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            }),
        }
    }
}

fn completion_id(fl: &Flavor, prefix: &str) -> String {
    if fl.uuid_ids {
        format!("{prefix}{}", gen::uuid())
    } else {
        gen::id(prefix, 29)
    }
}

fn fingerprint(fl: &Flavor) -> Value {
    if fl.fingerprint {
        Value::String("fp_stub0001".into())
    } else {
        Value::Null
    }
}

pub(super) async fn chat(
    ctx: &SharedCtx,
    fl: &Flavor,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    auth_headers(fl, headers)?;
    let o = parse_object(body)?;
    let model = check_model(fl, &o)?;
    let messages = validate_messages(&o)?;
    let (stream, include_usage) = stream_flags(&o)?;
    let n = opt_u64(&o, "n")?.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(ApiError::invalid_value(
            "n",
            format!(
                "Invalid 'n': integer {}. Expected a value between 1 and 128.",
                n
            ),
        ));
    }
    let max = match opt_u64(&o, "max_completion_tokens")? {
        Some(m) => Some(m),
        None => opt_u64(&o, "max_tokens")?,
    };
    if max == Some(0) {
        return Err(ApiError::invalid_value(
            "max_tokens",
            "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        ));
    }
    let seed = opt_i64(&o, "seed")?;
    if let Some(t) = opt_number(&o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid_value(
                "temperature",
                format!("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead."),
            ));
        }
    }
    let _ = opt_number(&o, "top_p")?;
    let stops = common::stop_list(o.get("stop"), "stop", 4)?;
    let tools = match o.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(v) => return Err(ApiError::invalid_type("tools", "an array", v)),
    };
    let format = response_format(&o)?;
    let forced = forced_tokens(headers)?;

    let tk = fl.tokenizer(model);
    let prompt_tokens = tk.chat(messages, o.get("tools"));
    let base_seed = request_seed(&[o.get("messages").unwrap_or(&Value::Null)], seed);
    let last_role = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("user");

    let mut answers = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = if i == 0 {
            base_seed
        } else {
            mix(base_seed.wrapping_add(i))
        };
        let mut rng = Rng::new(s ^ 0x7001);
        if let Some(tool) = pick_tool(tools, o.get("tool_choice"), last_role, &mut rng)? {
            let f = tool.get("function").unwrap_or(&Value::Null);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string();
            let schema = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type":"object"}));
            let args = gen::value_from_schema(&schema, &mut rng, 0).to_string();
            let tokens = tk.text(&name) + tk.text(&args);
            answers.push(Answer::Tool {
                id: gen::id("call_", 24),
                name,
                args,
                tokens,
            });
        } else {
            answers.push(Answer::Text(complete(s, forced, max, &stops, &format, tk)));
        }
    }
    let completion_tokens: u64 = answers.iter().map(Answer::tokens).sum();
    ctx.metrics.tokens(prompt_tokens, completion_tokens);

    let id = completion_id(fl, "chatcmpl-");
    let created = gen::now_secs();
    let mut pacer = Pacer::new(ctx.latency, base_seed);

    if !stream {
        // Typed serialization: no intermediate `Value` tree on the hot path.
        let contents: Vec<Option<String>> = answers
            .iter()
            .map(|a| match a {
                Answer::Text(c) => Some(c.text()),
                Answer::Tool { .. } => None,
            })
            .collect();
        let choices: Vec<ChoiceOut<'_>> = answers
            .iter()
            .zip(&contents)
            .enumerate()
            .map(|(i, (a, text))| {
                let tool_calls = match a {
                    Answer::Text(_) => None,
                    Answer::Tool { id, name, args, .. } => Some([ToolCallOut {
                        id,
                        kind: "function",
                        function: FunctionOut {
                            name,
                            arguments: args,
                        },
                    }]),
                };
                ChoiceOut {
                    index: i,
                    message: MessageOut {
                        role: "assistant",
                        content: text.as_deref(),
                        tool_calls,
                        refusal: None,
                        annotations: [],
                    },
                    logprobs: None,
                    finish_reason: a.finish(),
                }
            })
            .collect();
        let body = ChatOut {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices,
            usage: UsageOut::new(fl, prompt_tokens, completion_tokens),
            service_tier: "default",
            system_fingerprint: fl.fingerprint.then_some("fp_stub0001"),
        };
        common::delay(pacer.unary(completion_tokens / n.max(1))).await;
        return Ok(common::serialize_response(StatusCode::OK, &body));
    }

    // Streaming.
    let usage = usage(fl, prompt_tokens, completion_tokens);
    let fp = fingerprint(fl);
    let chunk = |choices: Value, with_usage: Option<&Value>| -> Value {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fp,
            "choices": choices,
        });
        if include_usage {
            if let Value::Object(m) = &mut c {
                m.insert("usage".into(), with_usage.cloned().unwrap_or(Value::Null));
            }
        }
        c
    };
    let choice = |i: usize, delta: Value, finish: Option<&str>| -> Value {
        json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}])
    };
    let all_pieces: Vec<Vec<String>> = answers.iter().map(Answer::pieces).collect();
    let steps = all_pieces.iter().map(Vec::len).max().unwrap_or(0);
    let mut events: Vec<(Duration, Bytes)> = Vec::with_capacity(answers.len() * (steps + 2) + 3);
    // Role chunks.
    let mut first = true;
    for (i, a) in answers.iter().enumerate() {
        let delta = match a {
            Answer::Text(_) => json!({"role": "assistant", "content": "", "refusal": null}),
            Answer::Tool { id, name, .. } => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}],
                "refusal": null
            }),
        };
        let d = if first { pacer.ttft() } else { Duration::ZERO };
        first = false;
        events.push((d, sse_data(&chunk(choice(i, delta, None), None))));
    }
    for step in 0..steps {
        let mut d = pacer.inter();
        for (i, a) in answers.iter().enumerate() {
            let Some(p) = all_pieces[i].get(step) else {
                continue;
            };
            let delta = match a {
                Answer::Text(_) => json!({"content": p}),
                Answer::Tool { .. } => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                }
            };
            events.push((d, sse_data(&chunk(choice(i, delta, None), None))));
            d = Duration::ZERO;
        }
    }
    for (i, a) in answers.iter().enumerate() {
        events.push((
            Duration::ZERO,
            sse_data(&chunk(choice(i, json!({}), Some(a.finish())), None)),
        ));
    }
    if include_usage {
        events.push((Duration::ZERO, sse_data(&chunk(json!([]), Some(&usage)))));
    }
    events.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    Ok(stream_response("text/event-stream; charset=utf-8", events))
}
