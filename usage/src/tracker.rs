//! [`UsageTracker`]: follows one response body, chunk by chunk.

use leaky_tokenize::Tokenizer;
use memchr::memchr;

use super::extract::{self, Accum, Doc};
use super::json::{JsonBody, MAX_BODY};
use super::{Surface, Usage};

/// What to do with a response chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Forward the chunk unchanged.
    Pass,
    /// Forward these bytes instead (possibly none: the tracker holds an incomplete event).
    Replace(Vec<u8>),
}

/// An SSE line or event longer than this is not parsed (and stops stripping).
const MAX_EVENT: usize = MAX_BODY;

/// Follows one response body: extracts the provider-reported usage, keeps the generated text
/// to count a stream cut short, and (when asked) strips the OpenAI usage chunk the gateway
/// asked for on the caller's behalf.
#[derive(Debug)]
pub struct UsageTracker {
    surface: Surface,
    tk: Tokenizer,
    incremental: bool,
    body: Body,
    acc: Accum,
}

#[derive(Debug)]
enum Body {
    Sse(Sse),
    Json(JsonBody),
    /// Not metered: nothing to look at.
    Off,
}

#[derive(Debug, Default)]
struct Sse {
    strip: bool,
    /// Not stripping: the incomplete last line. Stripping: the bytes not forwarded yet (the
    /// incomplete last event).
    held: Vec<u8>,
    /// Stripping: how much of `held` is complete lines.
    scanned: usize,
    /// Not stripping: the incomplete line is too long and is being skipped.
    skipping: bool,
    event: Event,
}

/// The event being read.
#[derive(Debug, Default)]
struct Event {
    /// `data:` lines that did not parse on their own (a multi-line data field).
    data: Vec<u8>,
    usage_chunk: bool,
}

struct Ctx<'a> {
    surface: Surface,
    incremental: bool,
    acc: &'a mut Accum,
}

impl Event {
    /// One line (without its `\n`). Returns, at the blank line ending an event, whether the
    /// event was an OpenAI usage chunk.
    fn line(&mut self, cx: &mut Ctx<'_>, line: &[u8]) -> Option<bool> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.data.is_empty() {
                let mut data = std::mem::take(&mut self.data);
                self.read(cx, &data);
                data.clear();
                self.data = data;
            }
            return Some(std::mem::take(&mut self.usage_chunk));
        }
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if !self.data.is_empty() {
                if self.data.len() + v.len() < MAX_EVENT {
                    self.data.push(b'\n');
                    self.data.extend_from_slice(v);
                }
            } else if !self.read(cx, v) {
                self.data.extend_from_slice(v);
            }
        }
        None
    }

    /// Reads one data payload; false when it is not JSON (yet).
    fn read(&mut self, cx: &mut Ctx<'_>, data: &[u8]) -> bool {
        match extract::read(cx.surface, cx.incremental, cx.acc, data) {
            Doc::NotJson => false,
            Doc::Done => true,
            Doc::Read { usage_chunk } => {
                self.usage_chunk |= usage_chunk;
                true
            }
        }
    }
}

impl UsageTracker {
    /// A tracker for one response on `surface` for `model`. `is_event_stream`: the response is
    /// `text/event-stream`. `strip_usage_chunk`: the gateway injected `include_usage` (see
    /// [`with_include_usage`](super::with_include_usage)); the final `{"choices":[],
    /// "usage":..}` chunk is then removed from the stream (only for OpenAI-shaped SSE).
    pub fn new(
        surface: Surface,
        model: &str,
        is_event_stream: bool,
        strip_usage_chunk: bool,
    ) -> Self {
        let body = if !surface.is_metered() {
            Body::Off
        } else if is_event_stream {
            Body::Sse(Sse {
                strip: strip_usage_chunk && surface.supports_include_usage(),
                ..Sse::default()
            })
        } else {
            Body::Json(JsonBody::default())
        };
        UsageTracker {
            surface,
            tk: surface.tokenizer(model),
            incremental: false,
            body,
            acc: Accum::default(),
        }
    }

    /// DashScope `incremental_output` ([`RequestCost::incremental`](super::RequestCost)):
    /// events carry deltas rather than the whole text so far. Without it the tracker still
    /// notices a text that does not extend the previous one and appends it.
    pub fn incremental_output(mut self, incremental: bool) -> Self {
        self.incremental = incremental;
        self
    }

    /// The surface this tracker reads.
    pub fn surface(&self) -> Surface {
        self.surface
    }

    /// The response is an event stream (SSE).
    pub fn is_event_stream(&self) -> bool {
        matches!(self.body, Body::Sse(_))
    }

    /// Reads a body chunk. Forward what the answer says. Without stripping this is always
    /// [`Chunk::Pass`]: bytes are never delayed.
    pub fn on_chunk(&mut self, chunk: &[u8]) -> Chunk {
        let mut cx = Ctx {
            surface: self.surface,
            incremental: self.incremental,
            acc: &mut self.acc,
        };
        match &mut self.body {
            Body::Off => Chunk::Pass,
            Body::Json(j) => {
                j.push(chunk);
                Chunk::Pass
            }
            Body::Sse(s) if s.strip => s.strip_chunk(&mut cx, chunk),
            Body::Sse(s) => {
                s.pass_chunk(&mut cx, chunk);
                Chunk::Pass
            }
        }
    }

    /// The body ended: reads an unterminated last line or event. Returns bytes still to
    /// forward (only when stripping held an incomplete last event that is not the usage chunk).
    pub fn on_end(&mut self) -> Vec<u8> {
        let mut cx = Ctx {
            surface: self.surface,
            incremental: self.incremental,
            acc: &mut self.acc,
        };
        let Body::Sse(s) = &mut self.body else {
            return Vec::new();
        };
        let held = std::mem::take(&mut s.held);
        let rest = if s.strip {
            held.get(s.scanned..).unwrap_or(&[])
        } else {
            &held[..]
        };
        if !rest.is_empty() && !s.skipping {
            s.event.line(&mut cx, rest);
        }
        let usage_chunk = s.event.line(&mut cx, b"").unwrap_or(false);
        s.scanned = 0;
        s.skipping = false;
        if s.strip && !usage_chunk {
            held
        } else {
            Vec::new()
        }
    }

    /// The usage to settle with. When the provider reported usage in a complete answer, its
    /// numbers exactly (`reported`). Otherwise (a stream cut short, or no usage in the
    /// answer): the provider's prompt count if it sent one, else `prompt_estimate`; and the
    /// larger of the provider's partial completion count and the tokens of the text received.
    /// Unmetered surfaces settle to zero.
    pub fn finish(&self, prompt_estimate: u64) -> Usage {
        let read;
        let acc = match &self.body {
            Body::Off => return Usage::default(),
            Body::Json(j) => {
                read = j.read(self.surface, self.incremental);
                &read
            }
            Body::Sse(_) => &self.acc,
        };
        match acc.last {
            Some((p, c)) if acc.final_usage => Usage {
                prompt_tokens: p,
                completion_tokens: c,
                reported: true,
            },
            last => {
                let (p, c) = last.unwrap_or((0, 0));
                Usage {
                    prompt_tokens: if p > 0 { p } else { prompt_estimate },
                    completion_tokens: c.max(acc.gen.count(self.tk)),
                    reported: false,
                }
            }
        }
    }
}

impl Sse {
    /// Not stripping: reads complete lines, keeps the incomplete one.
    fn pass_chunk(&mut self, cx: &mut Ctx<'_>, chunk: &[u8]) {
        let mut rest = chunk;
        if !self.held.is_empty() || self.skipping {
            let Some(i) = memchr(b'\n', rest) else {
                self.hold(rest);
                return;
            };
            if !self.skipping {
                self.held.extend_from_slice(&rest[..i]);
                self.event.line(cx, &self.held);
            }
            self.held.clear();
            self.skipping = false;
            rest = &rest[i + 1..];
        }
        while let Some(i) = memchr(b'\n', rest) {
            self.event.line(cx, &rest[..i]);
            rest = &rest[i + 1..];
        }
        self.hold(rest);
    }

    fn hold(&mut self, partial: &[u8]) {
        if self.skipping {
            return;
        }
        if self.held.len() + partial.len() > MAX_EVENT {
            self.held.clear();
            self.skipping = true;
        } else {
            self.held.extend_from_slice(partial);
        }
    }

    /// Stripping: forwards complete events except the usage chunk.
    fn strip_chunk(&mut self, cx: &mut Ctx<'_>, chunk: &[u8]) -> Chunk {
        let fresh = self.held.is_empty();
        self.held.extend_from_slice(chunk);
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        let mut dropped = false;
        let mut start = 0;
        let mut pos = self.scanned;
        while let Some(i) = memchr(b'\n', &held[pos..]) {
            let end = pos + i;
            if let Some(usage_chunk) = self.event.line(cx, &held[pos..end]) {
                if usage_chunk {
                    dropped = true;
                } else {
                    out.extend_from_slice(&held[start..=end]);
                }
                start = end + 1;
            }
            pos = end + 1;
        }
        if fresh && !dropped && start == held.len() {
            self.scanned = 0;
            self.held = held;
            self.held.clear();
            return Chunk::Pass;
        }
        if held.len() - start > MAX_EVENT {
            // An event too large to hold: give up stripping, forward everything.
            out.extend_from_slice(&held[start..]);
            self.held = held[pos..].to_vec();
            self.strip = false;
            self.scanned = 0;
            return Chunk::Replace(out);
        }
        self.held = held;
        self.held.drain(..start);
        self.scanned = pos - start;
        Chunk::Replace(out)
    }
}
