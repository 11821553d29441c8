//! Gemini API stub: the native surface under `/v1beta` and `/v1` (Google serves
//! both), plus its OpenAI-compatible endpoints under `/v1beta/openai/` only.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::common::{
    self, check_key, complete, forced_tokens, json_response, parse_object, request_seed,
    stream_response, ApiError, Completion, Dialect, Finish, Format, Pacer, SharedCtx,
};
use crate::gen::{self, mix, Rng};
use crate::openai::{compat_routes, f32_json, finish_router, Flavor, ModelInfo};
use crate::tokens::{self, Tokenizer};
use crate::{Latency, StubOptions};

fn family(m: &str) -> bool {
    ["gemini-", "gemma-", "text-embedding-", "embedding-"]
        .iter()
        .any(|p| m.starts_with(p))
}

fn default_embed_dim(m: &str) -> Option<usize> {
    if m.starts_with("gemini-embedding") {
        Some(3072)
    } else if m.starts_with("text-embedding-") || m.starts_with("embedding-") {
        Some(768)
    } else {
        None
    }
}

fn embed_dim(m: &str) -> Option<usize> {
    match MODELS.iter().find(|x| x.id == m) {
        Some(x) => x.embed_dim,
        None => default_embed_dim(m),
    }
}

fn supports_dimensions(m: &str) -> bool {
    embed_dim(m).is_some()
}

pub static MODELS: [ModelInfo; 5] = [
    ModelInfo {
        id: "gemini-2.5-pro",
        created: 0,
        embed_dim: None,
    },
    ModelInfo {
        id: "gemini-2.5-flash",
        created: 0,
        embed_dim: None,
    },
    ModelInfo {
        id: "gemini-2.0-flash",
        created: 0,
        embed_dim: None,
    },
    ModelInfo {
        id: "text-embedding-004",
        created: 0,
        embed_dim: Some(768),
    },
    ModelInfo {
        id: "gemini-embedding-001",
        created: 0,
        embed_dim: Some(3072),
    },
];

/// Gemini's OpenAI-compatible surface.
pub static COMPAT: Flavor = Flavor {
    dialect: Dialect::GoogleCompat,
    family,
    models: &MODELS,
    owned_by: "google",
    list_prefix: "models/",
    uuid_ids: false,
    fingerprint: false,
    rich_usage: false,
    goog_key: true,
    default_embed_dim,
    supports_dimensions,
    bpe: false,
};

/// The Gemini router.
pub fn router(latency: Latency) -> Router {
    router_with(&StubOptions::new(latency))
}

/// The router with faults, limits and a clock.
pub fn router_with(opts: &StubOptions) -> Router {
    let ctx = common::Ctx::new("gemini", Dialect::Google, opts);
    let api = NATIVE_VERSIONS
        .iter()
        .fold(compat_routes(&COMPAT, "/v1beta/openai"), |api, v| {
            native_routes(api, v)
        });
    finish_router(api, ctx)
}

/// The API versions Google serves the native surface under (`/v1` is what the
/// `google-genai` SDK uses by default with a custom base URL).
pub const NATIVE_VERSIONS: [&str; 2] = ["/v1beta", "/v1"];

/// The native surface (`models`, `models/{m}`, `models/{m}:{method}`) under `version`.
fn native_routes(api: Router<SharedCtx>, version: &str) -> Router<SharedCtx> {
    api.route(
        &format!("{version}/models"),
        get(|headers: HeaderMap, uri: Uri| async move {
            list_models(&headers, &uri).unwrap_or_else(|e| e.render(Dialect::Google))
        }),
    )
    .route(
        &format!("{version}/models/{{*rest}}"),
        get(
            |headers: HeaderMap, uri: Uri, Path(rest): Path<String>| async move {
                get_model(&headers, &uri, &rest).unwrap_or_else(|e| e.render(Dialect::Google))
            },
        )
        .post(
            |State(ctx): State<SharedCtx>,
             headers: HeaderMap,
             uri: Uri,
             Path(rest): Path<String>,
             body: Bytes| async move {
                match dispatch(&ctx, &headers, &uri, &rest, &body).await {
                    Ok(r) => r,
                    Err(e) => e.render(Dialect::Google),
                }
            },
        ),
    )
}

fn api_key(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| common::query_param(uri.query(), "key"));
    check_key(key.as_deref())
}

fn display_name(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn model_object(id: &str) -> Value {
    if embed_dim(id).is_some() {
        json!({
            "name": format!("models/{id}"),
            "version": "001",
            "displayName": display_name(id),
            "description": "Obtain a distributed representation of a text.",
            "inputTokenLimit": 2048,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"],
        })
    } else {
        let pro = id.contains("pro");
        json!({
            "name": format!("models/{id}"),
            "version": "001",
            "displayName": display_name(id),
            "description": format!("Stub of {id}"),
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": if id.starts_with("gemini-2.0") { 8192 } else { 65_536 },
            "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
            "temperature": 1,
            "topP": 0.95,
            "topK": if pro { 64 } else { 40 },
            "maxTemperature": 2,
            "thinking": id.starts_with("gemini-2.5"),
        })
    }
}

fn list_models(headers: &HeaderMap, uri: &Uri) -> Result<Response, ApiError> {
    api_key(headers, uri)?;
    let models: Vec<Value> = MODELS.iter().map(|m| model_object(m.id)).collect();
    Ok(json_response(StatusCode::OK, &json!({ "models": models })))
}

fn get_model(headers: &HeaderMap, uri: &Uri, rest: &str) -> Result<Response, ApiError> {
    api_key(headers, uri)?;
    let rest = rest.trim_start_matches('/');
    if rest.contains(':') || rest.contains('/') {
        return Err(ApiError::route_not_found("GET", uri.path()));
    }
    if MODELS.iter().any(|m| m.id == rest) || family(rest) {
        Ok(json_response(StatusCode::OK, &model_object(rest)))
    } else {
        Err(ApiError::model_not_found(rest))
    }
}

async fn dispatch(
    ctx: &SharedCtx,
    headers: &HeaderMap,
    uri: &Uri,
    rest: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let rest = rest.trim_start_matches('/');
    let Some((model, method)) = rest.rsplit_once(':') else {
        return Err(ApiError::route_not_found("POST", uri.path()));
    };
    if !matches!(
        method,
        "generateContent"
            | "streamGenerateContent"
            | "countTokens"
            | "embedContent"
            | "batchEmbedContents"
    ) {
        return Err(ApiError::route_not_found("POST", uri.path()));
    }
    api_key(headers, uri)?;
    if !(MODELS.iter().any(|m| m.id == model) || family(model)) {
        return Err(ApiError::model_not_found(model));
    }
    let o = parse_object(body)?;
    match method {
        "generateContent" => generate(ctx, headers, model, &o, None).await,
        "streamGenerateContent" => {
            let sse = common::query_param(uri.query(), "alt").as_deref() == Some("sse");
            generate(ctx, headers, model, &o, Some(sse)).await
        }
        "countTokens" => count_tokens(&o),
        "embedContent" => embed_content(ctx, model, &o),
        _ => batch_embed(ctx, model, &o),
    }
}

/// Looks up a field by its camelCase or snake_case name (both are valid proto JSON).
fn field<'a>(o: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

fn invalid_at(path: &str, ty: &str, v: &Value) -> ApiError {
    ApiError::bad_request(format!("Invalid value at '{path}' ({ty}), {v}"))
}

fn g_u64(o: &Map<String, Value>, camel: &str, snake: &str) -> Result<Option<u64>, ApiError> {
    match field(o, camel, snake) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid_at(&format!("generation_config.{snake}"), "TYPE_INT32", v)),
    }
}

fn validate_content(c: &Value, path: &str, allow_no_role: bool) -> Result<(), ApiError> {
    let Value::Object(co) = c else {
        return Err(invalid_at(
            path,
            "type.googleapis.com/google.ai.generativelanguage.v1beta.Content",
            c,
        ));
    };
    if let Some(role) = co.get("role") {
        match role.as_str() {
            Some("user" | "model" | "function" | "tool" | "") => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Please use a valid role: user, model.",
                ))
            }
            None => return Err(invalid_at(&format!("{path}.role"), "TYPE_STRING", role)),
        }
    } else if !allow_no_role {
        // Google accepts a missing role for single-turn requests.
    }
    let parts = match co.get("parts") {
        Some(Value::Array(p)) => p,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(format!(
                "* GenerateContentRequest.{path}.parts: contents.parts must not be empty.\n"
            )))
        }
        Some(v) => {
            return Err(invalid_at(
                &format!("{path}.parts"),
                "type.googleapis.com/google.ai.generativelanguage.v1beta.Part",
                v,
            ))
        }
    };
    if parts.is_empty() {
        return Err(ApiError::bad_request(format!(
            "* GenerateContentRequest.{path}.parts: contents.parts must not be empty.\n"
        )));
    }
    for (i, p) in parts.iter().enumerate() {
        let Value::Object(po) = p else {
            return Err(invalid_at(
                &format!("{path}.parts[{i}]"),
                "type.googleapis.com/google.ai.generativelanguage.v1beta.Part",
                p,
            ));
        };
        if let Some(t) = po.get("text") {
            if !t.is_string() {
                return Err(invalid_at(
                    &format!("{path}.parts[{i}].text"),
                    "TYPE_STRING",
                    t,
                ));
            }
        } else if ![
            "inlineData",
            "inline_data",
            "fileData",
            "file_data",
            "functionCall",
            "function_call",
            "functionResponse",
            "function_response",
            "executableCode",
            "codeExecutionResult",
            "thought",
        ]
        .iter()
        .any(|k| po.contains_key(*k))
        {
            return Err(ApiError::bad_request(format!(
                "* GenerateContentRequest.{path}.parts[{i}].data: required oneof field 'data' must have one initialized field\n"
            )));
        }
    }
    Ok(())
}

fn contents(o: &Map<String, Value>) -> Result<&Vec<Value>, ApiError> {
    match o.get("contents") {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "* GenerateContentRequest.contents: contents is not specified\n",
        )),
        Some(Value::Array(a)) => {
            if a.is_empty() {
                return Err(ApiError::bad_request(
                    "* GenerateContentRequest.contents: contents is not specified\n",
                ));
            }
            for (i, c) in a.iter().enumerate() {
                validate_content(c, &format!("contents[{i}]"), true)?;
            }
            Ok(a)
        }
        Some(v) => Err(invalid_at(
            "contents",
            "type.googleapis.com/google.ai.generativelanguage.v1beta.Content",
            v,
        )),
    }
}

/// Prompt tokens of a generateContent request: contents, system instruction and tools.
fn prompt_tokens(o: &Map<String, Value>, contents: &[Value]) -> u64 {
    let mut n = tokens::gemini(
        contents,
        field(o, "systemInstruction", "system_instruction"),
    );
    if let Some(t @ Value::Array(a)) = o.get("tools") {
        if !a.is_empty() {
            n += tokens::text(&t.to_string());
        }
    }
    n
}

fn count_tokens(o: &Map<String, Value>) -> Result<Response, ApiError> {
    let total = if let Some(req) = field(o, "generateContentRequest", "generate_content_request") {
        let Value::Object(ro) = req else {
            return Err(invalid_at(
                "generate_content_request",
                "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentRequest",
                req,
            ));
        };
        let c = contents(ro)?;
        prompt_tokens(ro, c)
    } else {
        let c = contents(o)?;
        tokens::gemini(c, None)
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}),
    ))
}

enum Candidate {
    Text(Completion),
    Call {
        name: String,
        args: Value,
        tokens: u64,
    },
}

impl Candidate {
    fn tokens(&self) -> u64 {
        match self {
            Candidate::Text(c) => c.tokens,
            Candidate::Call { tokens, .. } => *tokens,
        }
    }
    fn finish(&self) -> &'static str {
        match self {
            Candidate::Text(c) if c.finish == Finish::Length => "MAX_TOKENS",
            _ => "STOP",
        }
    }
}

fn pick_function<'a>(
    o: &'a Map<String, Value>,
    contents: &[Value],
    rng: &mut Rng,
) -> Option<&'a Value> {
    let decls: Vec<&Value> = o
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| {
            field(
                t.as_object()?,
                "functionDeclarations",
                "function_declarations",
            )
        })
        .filter_map(Value::as_array)
        .flatten()
        .filter(|d| d.get("name").and_then(Value::as_str).is_some())
        .collect();
    if decls.is_empty() {
        return None;
    }
    let cfg = o
        .get("toolConfig")
        .or_else(|| o.get("tool_config"))
        .and_then(|t| {
            t.get("functionCallingConfig")
                .or_else(|| t.get("function_calling_config"))
        });
    let mode = cfg
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    let allowed: Option<Vec<&str>> = cfg
        .and_then(|c| {
            c.get("allowedFunctionNames")
                .or_else(|| c.get("allowed_function_names"))
        })
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let last_is_response = contents
        .last()
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter().any(|x| {
                x.get("functionResponse").is_some() || x.get("function_response").is_some()
            })
        });
    match mode {
        "NONE" => return None,
        "ANY" => {}
        _ if last_is_response => return None,
        _ => {}
    }
    let candidates: Vec<&Value> = decls
        .into_iter()
        .filter(|d| match &allowed {
            Some(names) => d
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n)),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[(rng.next_u64() % candidates.len() as u64) as usize])
}

async fn generate(
    ctx: &SharedCtx,
    headers: &HeaderMap,
    model: &str,
    o: &Map<String, Value>,
    stream: Option<bool>,
) -> Result<Response, ApiError> {
    let contents = contents(o)?;
    if let Some(si) = field(o, "systemInstruction", "system_instruction") {
        validate_content(si, "system_instruction", true)?;
    }
    let empty = Map::new();
    let gc = match field(o, "generationConfig", "generation_config") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(invalid_at(
                "generation_config",
                "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig",
                v,
            ))
        }
    };
    let max = g_u64(gc, "maxOutputTokens", "max_output_tokens")?;
    let n = g_u64(gc, "candidateCount", "candidate_count")?.unwrap_or(1);
    if !(1..=8).contains(&n) {
        return Err(ApiError::bad_request(
            "Only 1 to 8 candidates are supported.",
        ));
    }
    let seed = match field(gc, "seed", "seed") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| invalid_at("generation_config.seed", "TYPE_INT32", v))?,
        ),
    };
    if let Some(t) = field(gc, "temperature", "temperature") {
        if !t.is_number() {
            return Err(invalid_at("generation_config.temperature", "TYPE_FLOAT", t));
        }
    }
    let stops = match field(gc, "stopSequences", "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(a)) => {
            if a.len() > 5 {
                return Err(ApiError::bad_request(
                    "* GenerateContentRequest.generation_config.stop_sequences: exceeds the maximum number of stop sequences (5).\n",
                ));
            }
            a.iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        invalid_at("generation_config.stop_sequences", "TYPE_STRING", s)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(v) => {
            return Err(invalid_at(
                "generation_config.stop_sequences",
                "TYPE_STRING",
                v,
            ))
        }
    };
    let format = match field(gc, "responseMimeType", "response_mime_type").and_then(Value::as_str) {
        Some("application/json") => match field(gc, "responseSchema", "response_schema")
            .or_else(|| field(gc, "responseJsonSchema", "response_json_schema"))
        {
            Some(s) => Format::JsonSchema(s.clone()),
            None => Format::JsonObject,
        },
        Some("text/plain") | None => Format::Text,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`. Got: {other}\n"
            )))
        }
    };
    let forced = forced_tokens(headers)?;
    let prompt = prompt_tokens(o, contents);
    let base = request_seed(&[o.get("contents").unwrap_or(&Value::Null)], seed);
    let mut cands = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = if i == 0 {
            base
        } else {
            mix(base.wrapping_add(i))
        };
        let mut rng = Rng::new(s ^ 0x7001);
        if let Some(decl) = pick_function(o, contents, &mut rng) {
            let name = decl
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("fn")
                .to_string();
            let schema = decl
                .get("parameters")
                .or_else(|| decl.get("parametersJsonSchema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let args = gen::value_from_schema(&schema, &mut rng, 0);
            let tokens = tokens::text(&name) + tokens::text(&args.to_string());
            cands.push(Candidate::Call { name, args, tokens });
        } else {
            cands.push(Candidate::Text(complete(
                s,
                forced,
                max,
                &stops,
                &format,
                Tokenizer::Approx,
            )));
        }
    }
    let completion: u64 = cands.iter().map(Candidate::tokens).sum();
    ctx.metrics.tokens(prompt, completion);
    let response_id = gen::id("", 22);
    let usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    let mut pacer = Pacer::new(ctx.latency, base);

    let Some(sse) = stream else {
        let candidates: Vec<Value> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let part = match c {
                    Candidate::Text(t) => json!({"text": t.text()}),
                    Candidate::Call { name, args, .. } => json!({"functionCall": {"name": name, "args": args}}),
                };
                json!({"content": {"parts": [part], "role": "model"}, "finishReason": c.finish(), "index": i})
            })
            .collect();
        common::delay(pacer.unary(completion / n)).await;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": response_id}),
        ));
    };

    // Streaming: text in chunks of up to 5 tokens; usage on every chunk, with
    // candidatesTokenCount only on the final one.
    const PER_CHUNK: usize = 5;
    let groups: Vec<Vec<String>> = cands
        .iter()
        .map(|c| match c {
            Candidate::Text(t) => t.pieces.chunks(PER_CHUNK).map(gen::join).collect(),
            Candidate::Call { .. } => Vec::new(),
        })
        .collect();
    let steps = groups.iter().map(|g| g.len().max(1)).max().unwrap_or(1);
    let partial_usage = json!({
        "promptTokenCount": prompt,
        "totalTokenCount": prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    let mut objs: Vec<(Duration, Value)> = Vec::with_capacity(steps);
    for step in 0..steps {
        let last = step + 1 == steps;
        let mut cs = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            let part = match c {
                Candidate::Text(_) => match groups[i].get(step) {
                    Some(t) => json!({"text": t}),
                    None if last => json!({"text": ""}),
                    None => continue,
                },
                Candidate::Call { name, args, .. } => {
                    if step != 0 {
                        if !last {
                            continue;
                        }
                        // Already sent; the final chunk only carries finishReason.
                        cs.push(json!({"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": c.finish(), "index": i}));
                        continue;
                    }
                    json!({"functionCall": {"name": name, "args": args}})
                }
            };
            let mut cand = json!({"content": {"parts": [part], "role": "model"}, "index": i});
            if last {
                if let Value::Object(m) = &mut cand {
                    m.insert("finishReason".into(), Value::from(c.finish()));
                }
            }
            cs.push(cand);
        }
        let d = if step == 0 {
            pacer.ttft()
        } else {
            let mut d = Duration::ZERO;
            for _ in 0..PER_CHUNK {
                d += pacer.inter();
            }
            d
        };
        objs.push((
            d,
            json!({
                "candidates": cs,
                "usageMetadata": if last { &usage } else { &partial_usage },
                "modelVersion": model,
                "responseId": response_id,
            }),
        ));
    }
    let total = objs.len();
    let events: Vec<(Duration, Bytes)> = objs
        .into_iter()
        .enumerate()
        .map(|(i, (d, v))| {
            let json = serde_json::to_vec(&v).unwrap_or_default();
            let mut out = Vec::with_capacity(json.len() + 8);
            if sse {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\r\n\r\n");
            } else {
                out.extend_from_slice(if i == 0 { b"[" as &[u8] } else { b",\r\n" });
                out.extend_from_slice(&json);
                if i + 1 == total {
                    out.push(b']');
                }
            }
            (d, Bytes::from(out))
        })
        .collect();
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    Ok(stream_response(ct, events))
}

fn embed_text(c: &Value) -> Result<String, ApiError> {
    let parts = c
        .get("parts")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "* EmbedContentRequest.content.parts: contents.parts must not be empty.\n",
            )
        })?;
    let mut s = String::new();
    for p in parts {
        match p.get("text") {
            Some(Value::String(t)) => s.push_str(t),
            Some(v) => return Err(invalid_at("content.parts.text", "TYPE_STRING", v)),
            None => {}
        }
    }
    Ok(s)
}

fn embed_one(model: &str, o: &Map<String, Value>, path: &str) -> Result<(Value, u64), ApiError> {
    let Some(full) = embed_dim(model) else {
        return Err(ApiError::model_not_found(model));
    };
    let content = match o.get("content") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(format!(
                "* {path}.content: content is not specified\n"
            )))
        }
        Some(c @ Value::Object(_)) => c,
        Some(v) => {
            return Err(invalid_at(
                "content",
                "type.googleapis.com/google.ai.generativelanguage.v1beta.Content",
                v,
            ))
        }
    };
    let text = embed_text(content)?;
    let dim = match field(o, "outputDimensionality", "output_dimensionality") {
        None => full,
        Some(v) => match v.as_u64() {
            Some(d) if d >= 1 && d as usize <= full => d as usize,
            _ => {
                return Err(ApiError::bad_request(format!(
                "Invalid value at 'output_dimensionality': must be between 1 and {full}, got {v}"
            )))
            }
        },
    };
    let h = crate::gen::Hasher::default().str(&text).finish();
    let mut v = gen::embedding(model, h, full);
    if dim < full {
        v.truncate(dim);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    let values: Vec<Value> = v.iter().map(|x| f32_json(*x)).collect();
    Ok((json!({ "values": values }), tokens::text(&text)))
}

fn embed_content(
    ctx: &SharedCtx,
    model: &str,
    o: &Map<String, Value>,
) -> Result<Response, ApiError> {
    let (emb, t) = embed_one(model, o, "EmbedContentRequest")?;
    ctx.metrics.tokens(t, 0);
    Ok(json_response(StatusCode::OK, &json!({ "embedding": emb })))
}

fn batch_embed(ctx: &SharedCtx, model: &str, o: &Map<String, Value>) -> Result<Response, ApiError> {
    let reqs = match o.get("requests") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "* BatchEmbedContentsRequest.requests: requests is not specified\n",
            ))
        }
        Some(v) => {
            return Err(invalid_at(
                "requests",
                "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentRequest",
                v,
            ))
        }
    };
    let mut out = Vec::with_capacity(reqs.len());
    let mut total = 0;
    for (i, r) in reqs.iter().enumerate() {
        let Value::Object(ro) = r else {
            return Err(invalid_at(
                &format!("requests[{i}]"),
                "type.googleapis.com/google.ai.generativelanguage.v1beta.EmbedContentRequest",
                r,
            ));
        };
        if let Some(m) = ro.get("model").and_then(Value::as_str) {
            if m.strip_prefix("models/").unwrap_or(m) != model {
                return Err(ApiError::bad_request(format!(
                    "* BatchEmbedContentsRequest.requests[{i}].model: Model names should match: models/{model} vs {m}\n"
                )));
            }
        }
        let (emb, t) = embed_one(
            model,
            ro,
            &format!("BatchEmbedContentsRequest.requests[{i}]"),
        )?;
        total += t;
        out.push(emb);
    }
    ctx.metrics.tokens(total, 0);
    Ok(json_response(StatusCode::OK, &json!({ "embeddings": out })))
}
