//! Token metering on routes with `rate-limit`: the request's estimated cost (before `on_admit`), the
//! OpenAI `include_usage` rewrite for streams whose caller did not ask for usage, and the response's
//! usage (the provider's report, or what was streamed when the response was cut).

use crate::service::Ctx;
use crate::snapshot::Upstream;
use bytes::Bytes;
use http::HeaderMap;
use leaky_config::Dialect;
use leaky_filters::limit::{TokenCost, TokenUsage};
use leaky_filters::usage::{self, Chunk, Surface, UsageTracker};
use pingora::http::RequestHeader;

pub struct Metering {
    surface: Surface,
    model: String,
    prompt_estimate: u64,
    incremental: bool,
    /// The gateway added `include_usage`: strip the usage chunk from the caller's stream.
    strip: bool,
    tracker: Option<UsageTracker>,
    /// The usage was handed to the chain already.
    settled: bool,
}

/// Estimates the request's cost into `ctx.req.cost` and returns the body to send upstream.
pub fn prepare(
    head: &RequestHeader,
    ctx: &mut Ctx,
    dialect: Dialect,
    up: &Upstream,
    rest: &str,
    body: Bytes,
) -> Bytes {
    let mut path = String::with_capacity(up.path_prefix.len() + rest.len());
    path.push_str(&up.path_prefix);
    path.push_str(rest);
    let surface = Surface::classify(dialect, &path);
    if !surface.is_metered() {
        return body;
    }
    let sse_requested = head
        .headers
        .get("x-dashscope-sse")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enable"))
        || head
            .headers
            .get(http::header::ACCEPT)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let model = ctx.req.model.clone().unwrap_or_default();
    let cost = usage::estimate(surface, &model, &body, sse_requested);
    ctx.req.cost = Some(TokenCost {
        prompt: cost.prompt_tokens,
        max_completion: cost.max_completion,
    });
    let mut strip = false;
    let mut body = body;
    if cost.stream && !cost.wants_usage && surface.supports_include_usage() {
        if let Some(b) = usage::with_include_usage(&body) {
            body = Bytes::from(b);
            strip = true;
        }
    }
    ctx.metering = Some(Metering {
        surface,
        model,
        prompt_estimate: cost.prompt_tokens,
        incremental: cost.incremental,
        strip,
        tracker: None,
        settled: false,
    });
    body
}

impl Metering {
    /// Only successful answers carry usage; anything else settles as "nothing used".
    pub fn on_response(&mut self, status: u16, headers: &HeaderMap) {
        if !(200..300).contains(&status) {
            return;
        }
        let sse = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        self.tracker = Some(
            UsageTracker::new(self.surface, &self.model, sse, self.strip)
                .incremental_output(self.incremental),
        );
    }

    /// The bytes to forward for an upstream chunk (the chunk itself unless stripping).
    pub fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        match self.tracker.as_mut().map(|t| t.on_chunk(&chunk)) {
            None | Some(Chunk::Pass) => chunk,
            Some(Chunk::Replace(b)) => Bytes::from(b),
        }
    }

    /// The body ended (first call only): the bytes a stripping tracker still held, to forward after
    /// the usage (`None` when the answer was not a success).
    pub fn finish_once(&mut self) -> Option<(Bytes, Option<TokenUsage>)> {
        if self.settled {
            return None;
        }
        self.settled = true;
        let held = self
            .tracker
            .as_mut()
            .map_or_else(Bytes::new, |t| Bytes::from(t.on_end()));
        Some((held, self.usage()))
    }

    /// The usage so far (provider-reported, or counted from what was streamed).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.tracker.as_ref().map(|t| {
            let u = t.finish(self.prompt_estimate);
            TokenUsage {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
                reported: u.reported,
            }
        })
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }
}
