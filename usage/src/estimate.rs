//! What a request will cost, before the upstream call (prompt, completion cap, number of choices);
//! and the request rewrites metering needs: `include_usage` for streams, the completion cap the
//! gateway enforces on uncapped requests.

use serde_json::{Map, Value};

use super::Surface;

/// The estimated cost of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCost {
    /// Prompt tokens, counted with the provider's rule (bytes / 4 when the body is not JSON).
    pub prompt_tokens: u64,
    /// The most completion tokens the request can generate: the per-choice cap (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `generationConfig.maxOutputTokens`,
    /// `parameters.max_tokens`; legacy completions default to 16) times the number of
    /// choices (and of prompts for legacy completions). `Some(0)` for embeddings and
    /// unmetered surfaces; `None` when uncapped.
    pub max_completion: Option<u64>,
    /// Choices generated per request: `n` (chat; `max(n, best_of)` × prompts for legacy
    /// completions), Gemini `generationConfig.candidateCount`, DashScope `parameters.n`; 1 otherwise.
    /// An uncapped request reserves the default completion this many times.
    pub choices: u64,
    /// The answer streams (`stream: true`, `:streamGenerateContent`, DashScope SSE).
    pub stream: bool,
    /// The caller asked for `stream_options.include_usage: true` (OpenAI-shaped streams).
    pub wants_usage: bool,
    /// DashScope `parameters.incremental_output: true` (stream events carry deltas, not the
    /// whole text so far); give it to [`UsageTracker::incremental_output`](super::UsageTracker::incremental_output).
    pub incremental: bool,
}

impl RequestCost {
    /// Tokens to reserve: the prompt plus the completion cap, or `default_completion` when
    /// the request sets none.
    pub fn reserve(&self, default_completion: u64) -> u64 {
        self.prompt_tokens.saturating_add(
            self.max_completion
                .unwrap_or_else(|| default_completion.saturating_mul(self.choices.max(1))),
        )
    }
}

/// The most choices one request may ask for (OpenAI's own bound on `n`). More is refused before
/// any reservation: each choice multiplies the completion reserved.
pub const MAX_CHOICES: u64 = 128;

/// Estimates a request on `surface` for `model` from its raw body. `sse_requested`: the
/// DashScope native `X-DashScope-SSE: enable` header or an `Accept: text/event-stream` (only
/// DashScope generation looks at it). Never panics; a body that is not JSON costs
/// `ceil(bytes / 4)` prompt tokens.
pub fn estimate(surface: Surface, model: &str, body: &[u8], sse_requested: bool) -> RequestCost {
    // A plain chat request is read without building a `Value` (same result; see `estimate_chat`).
    if let Surface::ChatCompletions(vendor) = surface {
        if let Some(cost) = super::estimate_chat::estimate(vendor, model, body) {
            return cost;
        }
    }
    estimate_with(
        surface,
        model,
        &ParsedBody::parse(body),
        sse_requested,
        Prompt::Exact,
    )
    .0
}

/// A request body parsed once, for a lower bound ([`estimate_floor_parsed`]) and then the exact
/// count ([`estimate_parsed`]) without parsing it twice (a multi-megabyte body's parse costs about
/// as much as its count).
pub struct ParsedBody {
    req: Option<Value>,
    len: usize,
}

impl ParsedBody {
    pub fn parse(body: &[u8]) -> Self {
        ParsedBody {
            req: serde_json::from_slice::<Value>(body).ok(),
            len: body.len(),
        }
    }
}

/// [`estimate`] of an already parsed body.
pub fn estimate_parsed(
    surface: Surface,
    model: &str,
    body: &ParsedBody,
    sse_requested: bool,
) -> RequestCost {
    estimate_with(surface, model, body, sse_requested, Prompt::Exact).0
}

/// [`estimate_floor`] of an already parsed body.
pub fn estimate_floor_parsed(
    surface: Surface,
    model: &str,
    body: &ParsedBody,
    sse_requested: bool,
) -> (RequestCost, bool) {
    estimate_with(surface, model, body, sse_requested, Prompt::Floor)
}

/// [`estimate`] with a lower bound of the prompt in `prompt_tokens`, computed from the byte length
/// of the texts the provider's tokenizer would encode (no BPE runs: a pass over the body), and
/// whether that bound is the exact count. A request whose bound can never fit its limits is
/// refused without paying for the exact count.
pub fn estimate_floor(
    surface: Surface,
    model: &str,
    body: &[u8],
    sse_requested: bool,
) -> (RequestCost, bool) {
    estimate_with(
        surface,
        model,
        &ParsedBody::parse(body),
        sse_requested,
        Prompt::Floor,
    )
}

/// How the prompt is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prompt {
    Exact,
    Floor,
}

fn estimate_with(
    surface: Surface,
    model: &str,
    body: &ParsedBody,
    sse_requested: bool,
    prompt: Prompt,
) -> (RequestCost, bool) {
    let Some(api) = surface.api().filter(|_| surface.is_metered()) else {
        return (unmetered(), true);
    };
    let stream_by_surface = match surface {
        Surface::GeminiStreamGenerate => true,
        Surface::DashScopeGeneration => sse_requested,
        _ => false,
    };
    let Some(req) = &body.req else {
        return (not_json(surface, body.len, stream_by_surface), true);
    };
    let vendor = surface.vendor().unwrap_or(leaky_tokenize::Vendor::OpenAi);
    let (prompt_tokens, exact) = match prompt {
        Prompt::Exact => (leaky_tokenize::prompt_tokens(vendor, api, model, req), true),
        Prompt::Floor => {
            let b = leaky_tokenize::prompt_bounds(vendor, api, model, req);
            (b.floor, b.is_exact())
        }
    };
    // `Map::new` does not allocate: a body that is not an object reads as one with no fields.
    let empty = Map::new();
    let o = req.as_object().unwrap_or(&empty);
    let mut cost = RequestCost {
        prompt_tokens,
        choices: 1,
        stream: stream_by_surface || o.get("stream").and_then(Value::as_bool) == Some(true),
        ..RequestCost::default()
    };
    completion(surface, o, sse_requested, &mut cost);
    (cost, exact)
}

/// The cost of a request on a surface that is not metered: nothing to reserve.
fn unmetered() -> RequestCost {
    RequestCost {
        max_completion: Some(0),
        choices: 1,
        ..RequestCost::default()
    }
}

/// The cost of a metered body that is not JSON: `ceil(bytes / 4)` prompt tokens, uncapped
/// when the surface generates.
fn not_json(surface: Surface, len: usize, stream: bool) -> RequestCost {
    RequestCost {
        prompt_tokens: (len as u64).div_ceil(4),
        max_completion: (!surface.generates()).then_some(0),
        choices: 1,
        stream,
        ..RequestCost::default()
    }
}

/// Fills the completion side of `cost` (choices, cap, stream flags) from the request object `o`,
/// each surface reading its own fields.
fn completion(
    surface: Surface,
    o: &Map<String, Value>,
    sse_requested: bool,
    cost: &mut RequestCost,
) {
    match surface {
        Surface::ChatCompletions(_) => {
            let cap = uint(o, "max_completion_tokens").or_else(|| uint(o, "max_tokens"));
            cost.choices = choices(o, "n");
            cost.max_completion = times(cap, cost.choices);
            cost.wants_usage = include_usage(o);
        }
        Surface::Completions(_) => legacy_completion(o, cost),
        Surface::Responses(_) => cost.max_completion = uint(o, "max_output_tokens"),
        Surface::GeminiGenerate | Surface::GeminiStreamGenerate => gemini_completion(o, cost),
        Surface::DashScopeGeneration => dashscope_completion(o, sse_requested, cost),
        _ => cost.max_completion = Some(0),
    }
}

/// Legacy completions: `max(n, best_of)` choices per prompt, `max_tokens` defaulting to 16.
fn legacy_completion(o: &Map<String, Value>, cost: &mut RequestCost) {
    let prompts = match o.get("prompt") {
        Some(Value::Array(a)) if a.iter().all(|x| x.is_string() || x.is_array()) => {
            a.len().max(1) as u64
        }
        _ => 1,
    };
    let n = choices(o, "n").max(choices(o, "best_of"));
    let cap = uint(o, "max_tokens").unwrap_or(16);
    cost.choices = n.saturating_mul(prompts);
    cost.max_completion = times(Some(cap), cost.choices);
    cost.wants_usage = include_usage(o);
}

/// Gemini native: `generationConfig` (or the snake-case spelling the SDKs also send).
fn gemini_completion(o: &Map<String, Value>, cost: &mut RequestCost) {
    let empty = Map::new();
    let gc = o
        .get("generationConfig")
        .or_else(|| o.get("generation_config"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let cap = uint(gc, "maxOutputTokens").or_else(|| uint(gc, "max_output_tokens"));
    let n = uint(gc, "candidateCount").or_else(|| uint(gc, "candidate_count"));
    cost.choices = n.unwrap_or(1).max(1);
    cost.max_completion = times(cap, cost.choices);
}

/// DashScope native: `parameters`; it streams on the SSE header or with incremental output.
fn dashscope_completion(o: &Map<String, Value>, sse_requested: bool, cost: &mut RequestCost) {
    let empty = Map::new();
    let p = o
        .get("parameters")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    cost.incremental = p.get("incremental_output").and_then(Value::as_bool) == Some(true);
    cost.stream = sse_requested || cost.incremental;
    cost.choices = choices(p, "n");
    cost.max_completion = times(uint(p, "max_tokens"), cost.choices);
}

/// The field `k` of `o` as an unsigned integer.
#[inline]
fn uint(o: &Map<String, Value>, k: &str) -> Option<u64> {
    o.get(k).and_then(Value::as_u64)
}

/// A choice count: absent or 0 counts as 1.
#[inline]
fn choices(o: &Map<String, Value>, k: &str) -> u64 {
    uint(o, k).unwrap_or(1).max(1)
}

/// A per-choice cap times the number of choices (`None` stays uncapped).
#[inline]
fn times(cap: Option<u64>, n: u64) -> Option<u64> {
    cap.map(|c| c.saturating_mul(n))
}

fn include_usage(o: &Map<String, Value>) -> bool {
    o.get("stream_options")
        .and_then(|s| s.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true)
}

/// For an OpenAI-shaped streaming request (`stream: true` with `messages` or `prompt`, i.e.
/// chat or legacy completions) that does not already set `stream_options.include_usage:
/// true`: the body re-serialized with it set, every other field kept (other
/// `stream_options` members too). `None` when not applicable (not JSON, not streaming, a
/// Responses or native request, `stream_options` not an object, or already set).
pub fn with_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut req: Value = serde_json::from_slice(body).ok()?;
    let o = req.as_object_mut()?;
    if o.get("stream").and_then(Value::as_bool) != Some(true)
        || !(o.contains_key("messages") || o.contains_key("prompt"))
        || o.contains_key("input")
        || include_usage(o)
    {
        return None;
    }
    match o.get_mut("stream_options") {
        None | Some(Value::Null) => {
            let mut so = Map::new();
            so.insert("include_usage".into(), Value::Bool(true));
            o.insert("stream_options".into(), Value::Object(so));
        }
        Some(Value::Object(so)) => {
            so.insert("include_usage".into(), Value::Bool(true));
        }
        Some(_) => return None,
    }
    serde_json::to_vec(&req).ok()
}

/// The request field that sets the number of choices on `surface` (for error messages).
pub fn choices_field(surface: Surface) -> &'static str {
    match surface {
        Surface::GeminiGenerate | Surface::GeminiStreamGenerate => {
            "generationConfig.candidateCount"
        }
        Surface::DashScopeGeneration => "parameters.n",
        _ => "n",
    }
}

/// The request with the per-choice completion cap `cap` set in its surface's own field, for a
/// request that sets none: OpenAI-shaped chat `max_completion_tokens` for OpenAI reasoning models
/// (o-series, gpt-5), `max_tokens` otherwise (what Gemini's and DashScope's compatible modes take);
/// legacy completions `max_tokens`; Responses `max_output_tokens`; Gemini
/// `generationConfig.maxOutputTokens`; DashScope `parameters.max_tokens`. `None` when not
/// applicable (a surface that does not generate, a body that is not a JSON object, a cap already set).
pub fn with_completion_cap(
    surface: Surface,
    model: &str,
    body: &[u8],
    cap: u64,
) -> Option<Vec<u8>> {
    let mut req: Value = serde_json::from_slice(body).ok()?;
    let o = req.as_object_mut()?;
    let (target, field) = match surface {
        Surface::ChatCompletions(v) => {
            if o.contains_key("max_tokens") || o.contains_key("max_completion_tokens") {
                return None;
            }
            let reasoning = v == leaky_tokenize::Vendor::OpenAi && is_reasoning_model(model);
            let field = if reasoning {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            (o, field)
        }
        Surface::Completions(_) => (o, "max_tokens"),
        Surface::Responses(_) => (o, "max_output_tokens"),
        Surface::GeminiGenerate | Surface::GeminiStreamGenerate => {
            let key = if o.contains_key("generation_config") {
                "generation_config"
            } else {
                "generationConfig"
            };
            let gc = o
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()?;
            if gc.contains_key("max_output_tokens") {
                return None;
            }
            (gc, "maxOutputTokens")
        }
        Surface::DashScopeGeneration => {
            let p = o
                .entry("parameters")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()?;
            (p, "max_tokens")
        }
        _ => return None,
    };
    if target.get(field).is_some_and(|v| !v.is_null()) {
        return None;
    }
    target.insert(field.into(), Value::from(cap));
    serde_json::to_vec(&req).ok()
}

/// OpenAI models that take `max_completion_tokens` and refuse `max_tokens`.
fn is_reasoning_model(model: &str) -> bool {
    let b = model.as_bytes();
    (b.first() == Some(&b'o') && b.get(1).is_some_and(u8::is_ascii_digit))
        || model.starts_with("gpt-5")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "estimate_tests.rs"]
mod tests;
