//! OpenAI API stub, plus the OpenAI-shaped endpoints reused by the Gemini
//! (`/v1beta/openai`) and DashScope (`/compatible-mode/v1`) compatibility
//! layers. Each use is described by a [`Flavor`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::common::{
    self, bearer, check_key, complete, forced_tokens, json_response, opt_bool, opt_i64, opt_number,
    opt_u64, parse_object, req_str, request_seed, sse_data, stream_response, ApiError, Completion,
    Dialect, Finish, Format, Pacer, SharedCtx,
};
use crate::gen::{self, mix, Hasher, Rng};
use crate::tokens::Tokenizer;
use crate::{Latency, StubOptions};

/// A model advertised by a stub's model listing.
pub struct ModelInfo {
    pub id: &'static str,
    pub created: u64,
    /// Embedding dimension for embedding models.
    pub embed_dim: Option<usize>,
}

/// How an OpenAI-shaped surface behaves for one provider.
pub struct Flavor {
    pub dialect: Dialect,
    pub family: fn(&str) -> bool,
    pub models: &'static [ModelInfo],
    pub owned_by: &'static str,
    /// Prefix of ids in the model listing (`models/` for Gemini).
    pub list_prefix: &'static str,
    /// Completion ids are `chatcmpl-<uuid>` instead of `chatcmpl-<29 alnum>`.
    pub uuid_ids: bool,
    pub fingerprint: bool,
    /// Include `prompt_tokens_details` / `completion_tokens_details`.
    pub rich_usage: bool,
    /// Also accept `x-goog-api-key` / `?key=`.
    pub goog_key: bool,
    /// Embedding dimension for a family model that is not in `models`.
    pub default_embed_dim: fn(&str) -> Option<usize>,
    /// Whether the `dimensions` parameter is supported by a model.
    pub supports_dimensions: fn(&str) -> bool,
    /// Count with the model's real BPE encoding instead of the approximation.
    pub bpe: bool,
}

impl Flavor {
    /// How this surface counts tokens for `model`.
    pub fn tokenizer(&self, model: &str) -> Tokenizer {
        if self.bpe {
            Tokenizer::for_openai_model(model)
        } else {
            Tokenizer::Approx
        }
    }

    pub fn normalise<'a>(&self, model: &'a str) -> &'a str {
        model.strip_prefix("models/").unwrap_or(model)
    }

    pub fn accepts(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model) || (self.family)(model)
    }

    fn embed_dim(&self, model: &str) -> Option<usize> {
        match self.models.iter().find(|m| m.id == model) {
            Some(m) => m.embed_dim,
            None => (self.default_embed_dim)(model),
        }
    }
}

fn openai_family(m: &str) -> bool {
    ["gpt-", "o1", "o3", "o4", "text-embedding-", "chatgpt-"]
        .iter()
        .any(|p| m.starts_with(p))
}

fn openai_embed_default(m: &str) -> Option<usize> {
    m.starts_with("text-embedding-").then_some(1536)
}

fn openai_supports_dimensions(m: &str) -> bool {
    m.starts_with("text-embedding-3")
}

pub static OPENAI_MODELS: [ModelInfo; 10] = [
    ModelInfo {
        id: "gpt-4o",
        created: 1_715_367_049,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4o-mini",
        created: 1_721_172_741,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4.1",
        created: 1_744_316_542,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4.1-mini",
        created: 1_744_318_173,
        embed_dim: None,
    },
    ModelInfo {
        id: "o3-mini",
        created: 1_737_146_383,
        embed_dim: None,
    },
    ModelInfo {
        id: "o4-mini",
        created: 1_744_225_351,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-3.5-turbo-instruct",
        created: 1_692_901_427,
        embed_dim: None,
    },
    ModelInfo {
        id: "text-embedding-3-small",
        created: 1_705_948_997,
        embed_dim: Some(1536),
    },
    ModelInfo {
        id: "text-embedding-3-large",
        created: 1_705_953_180,
        embed_dim: Some(3072),
    },
    ModelInfo {
        id: "text-embedding-ada-002",
        created: 1_671_217_299,
        embed_dim: Some(1536),
    },
];

pub static OPENAI: Flavor = Flavor {
    dialect: Dialect::OpenAi,
    family: openai_family,
    models: &OPENAI_MODELS,
    owned_by: "system",
    list_prefix: "",
    uuid_ids: false,
    fingerprint: true,
    rich_usage: true,
    goog_key: false,
    default_embed_dim: openai_embed_default,
    supports_dimensions: openai_supports_dimensions,
    bpe: true,
};

/// The OpenAI router.
pub fn router(latency: Latency) -> Router {
    router_with(&StubOptions::new(latency))
}

/// The router with faults, limits and a clock.
pub fn router_with(opts: &StubOptions) -> Router {
    let ctx = common::Ctx::new("openai", Dialect::OpenAi, opts);
    let api = compat_routes(&OPENAI, "/v1").route(
        "/v1/completions",
        post(
            |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                match legacy_completions(&ctx, &headers, &body).await {
                    Ok(r) => r,
                    Err(e) => e.render(Dialect::OpenAi),
                }
            },
        ),
    );
    let api = api.route(
        "/v1/responses",
        post(
            |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                match responses(&ctx, &headers, &body).await {
                    Ok(r) => r,
                    Err(e) => e.render(Dialect::OpenAi),
                }
            },
        ),
    );
    finish_router(api, ctx)
}

/// Adds health, metrics, fallback and the observing middleware.
pub fn finish_router(api: Router<SharedCtx>, ctx: SharedCtx) -> Router {
    let dialect = ctx.dialect;
    api.route("/healthz", get(common::healthz))
        .route("/metrics", get(common::metrics))
        .fallback(move |method: Method, uri: Uri| async move {
            let mut resp = ApiError::route_not_found(method.as_str(), uri.path()).render(dialect);
            resp.extensions_mut().insert(common::Unmatched);
            resp
        })
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            crate::control::control,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            common::observe,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

/// `chat/completions`, `embeddings`, `models` and `models/{id}` under `prefix`.
pub fn compat_routes(fl: &'static Flavor, prefix: &str) -> Router<SharedCtx> {
    Router::new()
        .route(
            &format!("{prefix}/chat/completions"),
            post(
                move |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    match chat(&ctx, fl, &headers, &body).await {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
        .route(
            &format!("{prefix}/embeddings"),
            post(
                move |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    match embeddings(&ctx, fl, &headers, &body) {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
        .route(
            &format!("{prefix}/models"),
            get(move |headers: HeaderMap, uri: Uri| async move {
                match list_models(fl, &headers, &uri) {
                    Ok(r) => r,
                    Err(e) => e.render(fl.dialect),
                }
            }),
        )
        .route(
            &format!("{prefix}/models/{{*id}}"),
            get(
                move |headers: HeaderMap, uri: Uri, Path(id): Path<String>| async move {
                    match get_model(fl, &headers, &uri, &id) {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
}

fn auth(fl: &Flavor, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let mut key = bearer(headers).map(str::to_string);
    if key.is_none() && fl.goog_key {
        key = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| common::query_param(uri.query(), "key"));
    }
    check_key(key.as_deref())
}

fn auth_headers(fl: &Flavor, headers: &HeaderMap) -> Result<(), ApiError> {
    let mut key = bearer(headers);
    if key.is_none() && fl.goog_key {
        key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    }
    check_key(key)
}

fn model_object(fl: &Flavor, id: &str, created: u64) -> Value {
    json!({
        "id": format!("{}{id}", fl.list_prefix),
        "object": "model",
        "created": created,
        "owned_by": fl.owned_by,
    })
}

fn list_models(fl: &Flavor, headers: &HeaderMap, uri: &Uri) -> Result<Response, ApiError> {
    auth(fl, headers, uri)?;
    let data: Vec<Value> = fl
        .models
        .iter()
        .map(|m| model_object(fl, m.id, m.created))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

fn get_model(fl: &Flavor, headers: &HeaderMap, uri: &Uri, id: &str) -> Result<Response, ApiError> {
    auth(fl, headers, uri)?;
    let id = fl.normalise(id.trim_start_matches('/'));
    if let Some(m) = fl.models.iter().find(|m| m.id == id) {
        return Ok(json_response(
            StatusCode::OK,
            &model_object(fl, m.id, m.created),
        ));
    }
    if (fl.family)(id) {
        return Ok(json_response(
            StatusCode::OK,
            &model_object(fl, id, 1_700_000_000),
        ));
    }
    Err(ApiError::model_not_found(id))
}

// ---------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn validate_messages(o: &Map<String, Value>) -> Result<&Vec<Value>, ApiError> {
    let messages = match o.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::invalid_type("messages", "an array", v)),
    };
    if messages.is_empty() {
        let mut e = ApiError::bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        );
        e.param = Some("messages".into());
        e.code = Some("empty_array");
        return Err(e);
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(mo) = m else {
            return Err(ApiError::invalid_type(
                &format!("messages[{i}]"),
                "an object",
                m,
            ));
        };
        let role = match mo.get("role") {
            None | Some(Value::Null) => {
                return Err(ApiError::missing(&format!("messages[{i}].role")))
            }
            Some(Value::String(r)) => r.as_str(),
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("messages[{i}].role"),
                    "a string",
                    v,
                ))
            }
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid_value(
                &format!("messages[{i}].role"),
                format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
            ));
        }
        match mo.get("content") {
            None | Some(Value::Null) => {
                if role != "assistant" {
                    return Err(ApiError::missing(&format!("messages[{i}].content")));
                }
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("messages[{i}].content"),
                    "one of a string or array of objects",
                    v,
                ))
            }
        }
    }
    Ok(messages)
}

/// Chooses the tool to call, if any.
fn pick_tool<'a>(
    tools: Option<&'a Vec<Value>>,
    tool_choice: Option<&Value>,
    last_role: &str,
    rng: &mut Rng,
) -> Result<Option<&'a Value>, ApiError> {
    let tools = match tools {
        Some(t) if !t.is_empty() => t,
        _ => {
            if matches!(tool_choice, Some(v) if !v.is_null()) {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                ));
            }
            return Ok(None);
        }
    };
    for (i, t) in tools.iter().enumerate() {
        match t.get("function").and_then(|f| f.get("name")) {
            Some(Value::String(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("tools[{i}].function.name"),
                    "a string",
                    v,
                ))
            }
            None => return Err(ApiError::missing(&format!("tools[{i}].function.name"))),
        }
    }
    let mut any = || tools.get((rng.next_u64() % tools.len() as u64) as usize);
    match tool_choice {
        None | Some(Value::Null) => Ok(if last_role == "tool" { None } else { any() }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(None),
            "auto" => Ok(if last_role == "tool" { None } else { any() }),
            "required" => Ok(any()),
            other => Err(ApiError::invalid_value(
                "tool_choice",
                format!("Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."),
            )),
        },
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing("tool_choice.function.name"))?;
            tools
                .iter()
                .find(|t| t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) == Some(name))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "tool_choice",
                        format!("Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter."),
                    )
                })
        }
        Some(v) => Err(ApiError::invalid_type("tool_choice", "a string or object", v)),
    }
}

fn response_format(o: &Map<String, Value>) -> Result<Format, ApiError> {
    match o.get("response_format") {
        None | Some(Value::Null) => Ok(Format::Text),
        Some(Value::Object(rf)) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => Ok(Format::Text),
            Some("json_object") => Ok(Format::JsonObject),
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                Ok(Format::JsonSchema(schema))
            }
            Some(other) => Err(ApiError::invalid_value(
                "response_format.type",
                format!("Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."),
            )),
            None => Err(ApiError::missing("response_format.type")),
        },
        Some(v) => Err(ApiError::invalid_type("response_format", "an object", v)),
    }
}

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

fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
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

fn stream_flags(o: &Map<String, Value>) -> Result<(bool, bool), ApiError> {
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            if !stream {
                let mut e = ApiError::bad_request(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                );
                e.param = Some("stream_options".into());
                return Err(e);
            }
            opt_bool(so, "include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(ApiError::invalid_type("stream_options", "an object", v)),
    };
    Ok((stream, include_usage))
}

fn check_model<'a>(fl: &Flavor, o: &'a Map<String, Value>) -> Result<&'a str, ApiError> {
    let model = fl.normalise(req_str(o, "model")?);
    if !fl.accepts(model) {
        return Err(ApiError::model_not_found(model));
    }
    Ok(model)
}

async fn chat(
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

// ---------------------------------------------------------------------------
// Legacy completions
// ---------------------------------------------------------------------------

async fn legacy_completions(
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

// ---------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------

/// Converts an f32 to the f64 with the same shortest decimal representation,
/// so JSON shows `0.0123` rather than `0.012299999594688416`.
pub fn f32_json(x: f32) -> Value {
    let s = x.to_string();
    s.parse::<f64>()
        .map(Value::from)
        .unwrap_or(Value::from(f64::from(x)))
}

/// `(hash, tokens)` of each embedding input.
fn embedding_inputs(v: Option<&Value>, tk: Tokenizer) -> Result<Vec<(u64, u64)>, ApiError> {
    let empty = || {
        ApiError::invalid_value(
            "input",
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        )
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::missing("input")),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(empty());
            }
            Ok(vec![(Hasher::default().str(s).finish(), tk.text(s))])
        }
        Some(Value::Array(a)) if a.is_empty() => Err(empty()),
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) => Ok(vec![(
            Hasher::default().value(&Value::Array(a.clone())).finish(),
            a.len() as u64,
        )]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) if !s.is_empty() => {
                    Ok((Hasher::default().str(s).finish(), tk.text(s)))
                }
                Value::Array(t) if !t.is_empty() && t.iter().all(Value::is_u64) => {
                    Ok((Hasher::default().value(x).finish(), t.len() as u64))
                }
                _ => Err(empty()),
            })
            .collect(),
        Some(v) => Err(ApiError::invalid_type("input", "a string or array", v)),
    }
}

fn embeddings(
    ctx: &SharedCtx,
    fl: &Flavor,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    auth_headers(fl, headers)?;
    let o = parse_object(body)?;
    let model = check_model(fl, &o)?;
    let Some(full_dim) = fl.embed_dim(model) else {
        return Err(ApiError::bad_request(format!(
            "The model `{model}` does not support embeddings."
        )));
    };
    let inputs = embedding_inputs(o.get("input"), fl.tokenizer(model))?;
    let dim = match opt_u64(&o, "dimensions")? {
        None => full_dim,
        Some(d) => {
            if !(fl.supports_dimensions)(model) {
                let mut e =
                    ApiError::bad_request("This model does not support specifying dimensions.");
                e.param = Some("dimensions".into());
                return Err(e);
            }
            if d == 0 || d as usize > full_dim {
                return Err(ApiError::invalid_value(
                    "dimensions",
                    format!("Invalid 'dimensions': expected a value between 1 and {full_dim}, but got {d} instead."),
                ));
            }
            d as usize
        }
    };
    let base64 = match o.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(Value::String(s)) => {
            return Err(ApiError::invalid_value(
                "encoding_format",
                format!("Invalid value: '{s}'. Supported values are: 'float' and 'base64'."),
            ))
        }
        Some(v) => return Err(ApiError::invalid_type("encoding_format", "a string", v)),
    };
    let mut total = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (h, t))| {
            total += t;
            let mut v = gen::embedding(model, *h, full_dim);
            if dim < full_dim {
                v.truncate(dim);
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
            let emb = if base64 {
                Value::String(gen::f32_base64(&v))
            } else {
                Value::Array(v.iter().map(|x| f32_json(*x)).collect())
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    ctx.metrics.tokens(total, 0);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }),
    ))
}

// ---------------------------------------------------------------------------
// Responses API
// ---------------------------------------------------------------------------

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

async fn responses(
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
