//! Reading Gemini and DashScope native documents (see [`super::extract`]).

use std::borrow::Cow;

use serde::Deserialize;

use super::extract::{message, Accum, OaDelta, RawUsage};
use super::text::{Slot, Text};

#[derive(Deserialize)]
pub(super) struct GemDoc<'a> {
    #[serde(borrow, default)]
    candidates: Option<Vec<GemCandidate<'a>>>,
    #[serde(default, rename = "usageMetadata")]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct GemCandidate<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    content: Option<GemContent<'a>>,
    #[serde(borrow, default, rename = "finishReason")]
    finish: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct GemContent<'a> {
    #[serde(borrow, default)]
    parts: Option<Vec<GemPart<'a>>>,
}

#[derive(Deserialize)]
struct GemPart<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default, rename = "functionCall")]
    function_call: Option<serde_json::Value>,
}

fn finished(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| !r.is_empty() && r != "null" && r != "FINISH_REASON_UNSPECIFIED")
}

pub(super) fn gemini(acc: &mut Accum, d: GemDoc<'_>) {
    let mut done = false;
    for (i, c) in d.candidates.iter().flatten().enumerate() {
        let choice = c.index.unwrap_or(i as u32);
        done |= finished(c.finish.as_deref());
        let parts = c.content.iter().flat_map(|c| c.parts.iter().flatten());
        for (k, p) in parts.enumerate() {
            if let Some(t) = &p.text {
                let kind = if p.thought == Some(true) {
                    Slot::REASONING
                } else {
                    Slot::CONTENT
                };
                acc.gen.append(Slot { choice, kind }, &t.0);
            }
            if let Some(f) = &p.function_call {
                let name = f.get("name").and_then(serde_json::Value::as_str);
                let args = f.get("args").map(|a| a.to_string());
                let k = k as u32;
                acc.gen.replace(
                    Slot {
                        choice,
                        kind: Slot::tool_name(k),
                    },
                    name.unwrap_or(""),
                );
                acc.gen.replace(
                    Slot {
                        choice,
                        kind: Slot::tool_args(k),
                    },
                    args.as_deref().unwrap_or(""),
                );
            }
        }
    }
    acc.usage(d.usage, done);
}

#[derive(Deserialize)]
pub(super) struct DsDoc<'a> {
    #[serde(borrow, default)]
    output: Option<DsOutput<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct DsOutput<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<DsChoice<'a>>>,
}

#[derive(Deserialize)]
struct DsChoice<'a> {
    #[serde(borrow, default)]
    message: Option<OaDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

pub(super) fn dashscope(acc: &mut Accum, d: DsDoc<'_>, incremental: bool) {
    let mut done = false;
    if let Some(o) = &d.output {
        done |= finished(o.finish_reason.as_deref());
        if let Some(t) = &o.text {
            let at = Slot {
                choice: 0,
                kind: Slot::CONTENT,
            };
            if incremental {
                acc.gen.append(at, &t.0)
            } else {
                acc.gen.cumulative(at, &t.0)
            }
        }
        for (i, c) in o.choices.iter().flatten().enumerate() {
            done |= finished(c.finish_reason.as_deref());
            if let Some(m) = &c.message {
                message(&mut acc.gen, i as u32, m, !incremental);
            }
        }
    }
    acc.usage(d.usage, done);
}
