//! Prompt tokens of a whole request, by provider surface: the same rules the
//! stubs apply when they report `prompt_tokens` / `promptTokenCount` /
//! `input_tokens`.

use serde_json::{Map, Value};

use crate::approx::{self, NON_TEXT_PART, PER_MESSAGE, REPLY_PRIMING};
use crate::bpe::Counter;
use crate::Tokenizer;

/// Who serves a surface; decides how text is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// OpenAI: the model's BPE encoding ([`Tokenizer::for_openai_model`]).
    OpenAi,
    /// Google Gemini (native and `/v1beta/openai`): the approximation.
    Google,
    /// Alibaba DashScope (native and `/compatible-mode`): the approximation.
    DashScope,
}

impl Vendor {
    /// How this vendor counts the text of `model`.
    pub fn tokenizer(self, model: &str) -> Tokenizer {
        match self {
            Vendor::OpenAi => {
                Tokenizer::for_openai_model(model.strip_prefix("models/").unwrap_or(model))
            }
            Vendor::Google | Vendor::DashScope => Tokenizer::Approx,
        }
    }
}

/// The request shape whose prompt is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI-shaped `chat/completions` (`messages`, `tools`).
    Chat,
    /// Legacy `completions` (`prompt`).
    Completions,
    /// The Responses API (`instructions`, `input`).
    Responses,
    /// OpenAI-shaped `embeddings` (`input`).
    Embeddings,
    /// Gemini `generateContent` / `streamGenerateContent`.
    GeminiGenerate,
    /// Gemini `countTokens` (what the answer's `totalTokens` will say).
    GeminiCountTokens,
    /// Gemini `embedContent` (`content`) or `batchEmbedContents` (`requests`).
    GeminiEmbed,
    /// DashScope native text generation (`input.messages` / `input.prompt`).
    DashScopeGeneration,
    /// DashScope native text embedding (`input.texts`).
    DashScopeEmbedding,
}

/// Prompt tokens of the request `req` (a parsed JSON body) on a surface.
/// Missing or mistyped fields count 0; never panics.
pub fn prompt_tokens(vendor: Vendor, api: Api, model: &str, req: &Value) -> u64 {
    count(Counter::exact(vendor.tokenizer(model)), api, req)
}

/// Bounds on [`prompt_tokens`] of a request, from the byte length of the texts it counts: no BPE
/// runs, so this costs a pass over the parsed body (the exact count of a multi-megabyte prompt
/// costs seconds of CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptBounds {
    /// `prompt_tokens` is at least this: every BPE token is at most
    /// [`Tokenizer::longest_token_bytes`] long.
    pub floor: u64,
    /// `prompt_tokens` is at most this: every BPE token is at least one byte.
    pub ceiling: u64,
}

impl PromptBounds {
    /// The bounds pin the count down (the approximation is counted exactly here).
    pub fn is_exact(&self) -> bool {
        self.floor == self.ceiling
    }
}

/// [`PromptBounds`] of the request `req` on a surface.
pub fn prompt_bounds(vendor: Vendor, api: Api, model: &str, req: &Value) -> PromptBounds {
    let tk = vendor.tokenizer(model);
    // Fixed overheads count as themselves, texts by their bytes: an upper bound.
    let ceiling = count(Counter::bytes(tk), api, req);
    match tk.longest_token_bytes() {
        // ceil(ceiling / L) ≤ overheads + Σ ceil(bytes_i / L) ≤ the exact count.
        Some(longest) => PromptBounds {
            floor: ceiling.div_ceil(longest.max(1)),
            ceiling,
        },
        None => PromptBounds {
            floor: ceiling,
            ceiling,
        },
    }
}

fn count(c: Counter, api: Api, req: &Value) -> u64 {
    let Value::Object(o) = req else {
        return 0;
    };
    match api {
        Api::Chat => {
            let msgs = o.get("messages").and_then(Value::as_array);
            c.chat(msgs.map(Vec::as_slice).unwrap_or(&[]), o.get("tools"))
        }
        Api::Completions => input_count(c, o.get("prompt")),
        Api::Responses => responses(c, o),
        Api::Embeddings => input_count(c, o.get("input")),
        Api::GeminiGenerate => gemini_generate(o),
        Api::GeminiCountTokens => {
            match field(o, "generateContentRequest", "generate_content_request") {
                Some(Value::Object(r)) => gemini_generate(r),
                _ => approx::gemini(array(o.get("contents")), None),
            }
        }
        Api::GeminiEmbed => match o.get("requests") {
            Some(Value::Array(rs)) => rs
                .iter()
                .map(|r| r.get("content").map(gemini_embed_text).unwrap_or(0))
                .sum(),
            _ => o.get("content").map(gemini_embed_text).unwrap_or(0),
        },
        Api::DashScopeGeneration => dashscope_generation(o),
        Api::DashScopeEmbedding => match o.get("input").and_then(|i| i.get("texts")) {
            Some(Value::String(s)) => approx::text(s),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(approx::text).sum(),
            _ => 0,
        },
    }
}

/// Tokens of a completions `prompt` or embeddings `input`: a string, an array
/// of strings, a pre-tokenized array of integers (its length), or an array of
/// such arrays.
pub fn input_tokens(tk: Tokenizer, v: Option<&Value>) -> u64 {
    input_count(Counter::exact(tk), v)
}

fn input_count(c: Counter, v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => c.text(s),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => a.len() as u64,
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => c.text(s),
                Value::Array(t) => t.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A Gemini field by its camelCase or snake_case name (both are valid proto JSON).
fn field<'a>(o: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

fn gemini_generate(o: &Map<String, Value>) -> u64 {
    let mut n = approx::gemini(
        array(o.get("contents")),
        field(o, "systemInstruction", "system_instruction"),
    );
    if let Some(t @ Value::Array(a)) = o.get("tools") {
        if !a.is_empty() {
            n += approx::text(&t.to_string());
        }
    }
    n
}

/// Gemini embeds the concatenated text of the content's parts.
fn gemini_embed_text(c: &Value) -> u64 {
    let mut s = String::new();
    for p in array(c.get("parts")) {
        if let Some(Value::String(t)) = p.get("text") {
            s.push_str(t);
        }
    }
    approx::text(&s)
}

/// The Responses API counts `instructions` as a `developer` message, then
/// each input item as a chat message.
fn responses(tk: Counter, o: &Map<String, Value>) -> u64 {
    let msg = |role: &str, content: u64| {
        PER_MESSAGE + if tk.tk.is_bpe() { tk.text(role) } else { 0 } + content
    };
    let mut n = REPLY_PRIMING;
    if let Some(Value::String(s)) = o.get("instructions") {
        n += msg("developer", tk.text(s));
    }
    match o.get("input") {
        Some(Value::String(s)) => n += msg("user", tk.text(s)),
        Some(Value::Array(items)) => {
            for it in items {
                let role = it.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = match it.get("content") {
                    Some(Value::String(s)) => tk.text(s),
                    Some(Value::Array(parts)) => parts.iter().map(|p| response_part(tk, p)).sum(),
                    // Items without content (function call outputs...): their text.
                    _ => ["output", "arguments"]
                        .iter()
                        .filter_map(|k| it.get(*k).and_then(Value::as_str))
                        .map(|s| tk.text(s))
                        .sum(),
                };
                n += msg(role, content);
            }
        }
        _ => {}
    }
    n
}

fn response_part(tk: Counter, p: &Value) -> u64 {
    match (p.get("text"), p) {
        (Some(Value::String(s)), _) => tk.text(s),
        (Some(_), _) | (None, Value::Object(_)) => NON_TEXT_PART,
        (None, Value::String(s)) => tk.text(s),
        (None, _) => 0,
    }
}

fn dashscope_generation(o: &Map<String, Value>) -> u64 {
    let input = o.get("input");
    let tools = o.get("parameters").and_then(|p| p.get("tools"));
    match (
        input.and_then(|i| i.get("messages")),
        input.and_then(|i| i.get("prompt")),
    ) {
        (Some(Value::Array(m)), _) if !m.is_empty() => approx::chat(m, tools),
        (_, Some(Value::String(p))) => approx::chat(&[], tools) + PER_MESSAGE + approx::text(p),
        _ => approx::chat(&[], tools),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "prompt_tests.rs"]
mod tests;
