//! Reading one JSON document (an SSE event's data, or a whole body) of each provider: the
//! usage it reports and the text it generated. Typed, borrowing deserialization: fields that
//! are not needed are skipped without building values. OpenAI shapes here, native Gemini
//! and DashScope ones in `native.rs`.

use std::borrow::Cow;

use serde::Deserialize;

use super::member::last_usage;
use super::native::{dashscope, gemini};
use super::text::{Generated, Slot, Text};
use super::Surface;

/// Usage in any provider's shape (OpenAI, Responses, Gemini, DashScope).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(super) struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    #[serde(rename = "promptTokenCount")]
    gemini_prompt: Option<u64>,
    #[serde(rename = "candidatesTokenCount")]
    gemini_candidates: Option<u64>,
    #[serde(rename = "thoughtsTokenCount")]
    gemini_thoughts: Option<u64>,
    #[serde(rename = "toolUsePromptTokenCount")]
    gemini_tool_prompt: Option<u64>,
    #[serde(rename = "totalTokenCount")]
    gemini_total: Option<u64>,
}

impl RawUsage {
    /// The member names serde reads into counts, in [`RawUsage::put`]'s order.
    const FIELDS: [&'static [u8]; 10] = [
        b"prompt_tokens",
        b"completion_tokens",
        b"total_tokens",
        b"input_tokens",
        b"output_tokens",
        b"promptTokenCount",
        b"candidatesTokenCount",
        b"thoughtsTokenCount",
        b"toolUsePromptTokenCount",
        b"totalTokenCount",
    ];

    /// Which count a usage object's member `key` is (`None`: one serde skips).
    pub(super) fn field(key: &[u8]) -> Option<usize> {
        Self::FIELDS.iter().position(|f| *f == key)
    }

    /// Sets count `field` (an index from [`RawUsage::field`]).
    pub(super) fn put(&mut self, field: usize, n: Option<u64>) {
        let slots = [
            &mut self.prompt_tokens,
            &mut self.completion_tokens,
            &mut self.total_tokens,
            &mut self.input_tokens,
            &mut self.output_tokens,
            &mut self.gemini_prompt,
            &mut self.gemini_candidates,
            &mut self.gemini_thoughts,
            &mut self.gemini_tool_prompt,
            &mut self.gemini_total,
        ];
        if let Some(slot) = slots.into_iter().nth(field) {
            *slot = n;
        }
    }

    /// `(prompt, completion)` tokens, if the object says anything.
    pub fn pair(&self) -> Option<(u64, u64)> {
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            let p = self.prompt_tokens.unwrap_or(0);
            let c = self
                .completion_tokens
                .or_else(|| self.total_tokens.map(|t| t.saturating_sub(p)))
                .unwrap_or(0);
            return Some((p, c));
        }
        if self.input_tokens.is_some() || self.output_tokens.is_some() {
            return Some((
                self.input_tokens.unwrap_or(0),
                self.output_tokens.unwrap_or(0),
            ));
        }
        if self.gemini_prompt.is_some() || self.gemini_total.is_some() {
            let p = self.gemini_prompt.unwrap_or(0) + self.gemini_tool_prompt.unwrap_or(0);
            let c = self.gemini_candidates.unwrap_or(0) + self.gemini_thoughts.unwrap_or(0);
            let c = c.max(self.gemini_total.unwrap_or(0).saturating_sub(p));
            return Some((p, c));
        }
        self.total_tokens.map(|t| (t, 0))
    }
}

/// What a response reported and generated so far.
#[derive(Debug, Default)]
pub(super) struct Accum {
    pub gen: Generated,
    /// The last usage seen.
    pub last: Option<(u64, u64)>,
    /// The last usage came with the end of the answer (a final chunk or a finish reason).
    pub final_usage: bool,
}

impl Accum {
    pub(super) fn usage(&mut self, u: Option<RawUsage>, is_final: bool) {
        if let Some(p) = u.as_ref().and_then(RawUsage::pair) {
            self.last = Some(p);
            self.final_usage = is_final;
        }
    }
}

/// What one document was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Doc {
    /// Not (complete) JSON of the expected shape.
    NotJson,
    /// `[DONE]`.
    Done,
    /// Read; `usage_chunk`: an OpenAI `{"choices":[],"usage":{..}}` chunk.
    Read { usage_chunk: bool },
}

const READ: Doc = Doc::Read { usage_chunk: false };

/// Reads one document of `surface`. `incremental`: DashScope events carry deltas.
pub(super) fn read(surface: Surface, incremental: bool, acc: &mut Accum, data: &[u8]) -> Doc {
    if data.trim_ascii() == b"[DONE]" {
        return Doc::Done;
    }
    let ok = match surface {
        Surface::ChatCompletions(_) | Surface::Completions(_) => {
            let mut chunk = super::fast::Chunk::default();
            if super::fast::openai_chunk(data, &mut chunk) {
                return openai_fast(acc, &chunk);
            }
            return openai_serde(acc, data);
        }
        Surface::Responses(_) => from_json(data).map(|d| responses(acc, d)),
        Surface::GeminiGenerate | Surface::GeminiStreamGenerate => {
            from_json(data).map(|d| gemini(acc, d))
        }
        Surface::DashScopeGeneration => from_json(data).map(|d| dashscope(acc, d, incremental)),
        _ => from_json::<UsageDoc>(data).map(|d| acc.usage(d.usage, true)),
    };
    ok.map_or(Doc::NotJson, |()| READ)
}

/// The usage a whole JSON answer of `surface` reports, read without the rest of it: every other
/// member is skipped by the parser (no text collected, nothing allocated). `None` when the answer
/// is not JSON, reports no usage, or is of a surface read whole anyway ([`read`] then decides).
/// A complete answer with usage settles on it alone; its generated text is only needed without.
///
/// The usage member is first looked for from the end of the answer ([`last_usage`]), which reads
/// only the usage and what follows it; the answer is parsed from its start when that cannot prove
/// the member is the outermost object's.
pub(super) fn reported(surface: Surface, data: &[u8]) -> Option<(u64, u64)> {
    match surface {
        Surface::ChatCompletions(_) | Surface::Completions(_) | Surface::DashScopeGeneration => {
            if let Some(p) = last_usage(data, b"\"usage\"").and_then(|u| u.pair()) {
                return Some(p);
            }
            from_json::<UsageOnly>(data).ok()?.usage?.pair()
        }
        Surface::GeminiGenerate | Surface::GeminiStreamGenerate => {
            if let Some(p) = last_usage(data, b"\"usageMetadata\"").and_then(|u| u.pair()) {
                return Some(p);
            }
            from_json::<GemUsageOnly>(data).ok()?.usage?.pair()
        }
        Surface::Responses(_) => {
            let d = from_json::<RespUsageOnly>(data).ok()?;
            // As `responses`: the `response` object's usage wins over a top-level one.
            let inner = d.response.and_then(|r| r.usage).and_then(|u| u.pair());
            inner.or_else(|| d.usage?.pair())
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct GemUsageOnly {
    #[serde(default, rename = "usageMetadata")]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RespUsageOnly {
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    response: Option<UsageDoc>,
}

#[derive(Deserialize)]
struct UsageDoc {
    #[serde(default, alias = "usageMetadata")]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct OaDoc<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<OaChoice<'a>>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct OaChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default, alias = "message")]
    delta: Option<OaDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

#[derive(Deserialize)]
pub(super) struct OaDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<OaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct OaToolCall<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    function: Option<OaFunction<'a>>,
}

#[derive(Deserialize)]
struct OaFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

/// Adds (or, `cumulative`, replaces) a message's content, reasoning and tool calls.
pub(super) fn message(gen: &mut Generated, choice: u32, d: &OaDelta<'_>, cumulative: bool) {
    let put = |gen: &mut Generated, kind: u32, t: &Option<Text<'_>>| {
        if let Some(t) = t {
            let at = Slot { choice, kind };
            if cumulative {
                gen.cumulative(at, &t.0)
            } else {
                gen.append(at, &t.0)
            }
        }
    };
    put(gen, Slot::CONTENT, &d.content);
    put(gen, Slot::REASONING, &d.reasoning_content);
    for (i, call) in d.tool_calls.iter().flatten().enumerate() {
        let k = call.index.unwrap_or(i as u32);
        if let Some(f) = &call.function {
            put(gen, Slot::tool_name(k), &f.name);
            put(gen, Slot::tool_args(k), &f.arguments);
        }
    }
}

/// `serde_json::from_slice`, with the document's UTF-8 checked once rather than string by string:
/// `from_slice` validates each string it reads on its own (about 100 instructions each, a dozen in
/// a small chat request), `from_str` trusts a `str`. A document that is not UTF-8 goes to
/// `from_slice`, for its error.
pub(super) fn from_json<'a, T: serde::Deserialize<'a>>(data: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(data),
    }
}

/// An OpenAI document read by serde (everything the fast path leaves to it).
pub(super) fn openai_serde(acc: &mut Accum, data: &[u8]) -> Doc {
    from_json::<OaDoc>(data).map_or(Doc::NotJson, |d| openai(acc, d))
}

/// A chunk read by [`super::fast`]: the same effect as [`openai`] on serde's reading of it (no
/// usage, no tool calls by construction).
pub(super) fn openai_fast(acc: &mut Accum, chunk: &super::fast::Chunk<'_>) -> Doc {
    if let Some((choices, n)) = &chunk.choices {
        for (i, c) in choices.iter().take(*n).enumerate() {
            let choice = c.index.unwrap_or(i as u32);
            let texts = [
                (Slot::CONTENT, &c.content),
                (Slot::REASONING, &c.reasoning),
                (Slot::CONTENT, &c.text),
            ];
            for (kind, t) in texts {
                if let Some(t) = t {
                    acc.gen.append(Slot { choice, kind }, t);
                }
            }
        }
    }
    READ
}

fn openai(acc: &mut Accum, d: OaDoc<'_>) -> Doc {
    for (i, c) in d.choices.iter().flatten().enumerate() {
        let choice = c.index.unwrap_or(i as u32);
        if let Some(delta) = &c.delta {
            message(&mut acc.gen, choice, delta, false);
        }
        if let Some(t) = &c.text {
            acc.gen.append(
                Slot {
                    choice,
                    kind: Slot::CONTENT,
                },
                &t.0,
            );
        }
    }
    let usage_chunk = d.usage.is_some() && d.choices.as_ref().is_some_and(Vec::is_empty);
    acc.usage(d.usage, true);
    Doc::Read { usage_chunk }
}

#[derive(Deserialize)]
struct RespDoc<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Text<'a>>,
    #[serde(default)]
    output_index: Option<u32>,
    #[serde(default)]
    response: Option<UsageDoc>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    output: Option<Vec<RespItem<'a>>>,
}

#[derive(Deserialize)]
struct RespItem<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

fn responses(acc: &mut Accum, d: RespDoc<'_>) {
    let choice = d.output_index.unwrap_or(0);
    match (d.kind.as_deref(), &d.delta) {
        (Some("response.output_text.delta" | "response.refusal.delta"), Some(t)) => acc.gen.append(
            Slot {
                choice,
                kind: Slot::CONTENT,
            },
            &t.0,
        ),
        (Some("response.function_call_arguments.delta"), Some(t)) => acc.gen.append(
            Slot {
                choice,
                kind: Slot::tool_args(0),
            },
            &t.0,
        ),
        _ => {}
    }
    for (i, item) in d.output.iter().flatten().enumerate() {
        let choice = i as u32;
        let items = [
            (Slot::CONTENT, &item.content),
            (Slot::tool_name(0), &item.name),
            (Slot::tool_args(0), &item.arguments),
        ];
        for (kind, t) in items {
            if let Some(t) = t {
                acc.gen.append(Slot { choice, kind }, &t.0);
            }
        }
    }
    acc.usage(d.usage, true);
    if let Some(r) = d.response {
        acc.usage(r.usage, true);
    }
}
