//! Token metering on routes with `rate-limit`: the request's estimated cost (before `on_admit`; large
//! bodies on the bounded estimate pool, refused early when a lower bound cannot fit), the
//! OpenAI `include_usage` rewrite for streams whose caller did not ask for usage, and the response's
//! usage (the provider's report, or what was streamed when the response was cut).

use crate::offload;
use crate::service::Ctx;
use crate::snapshot::{CompiledRoute, Upstream};
use bytes::Bytes;
use http::HeaderMap;
use leaky_filters::limit::{TokenCost, TokenUsage};
use leaky_filters::usage::{self, Chunk, Surface, UsageTracker};
use leaky_filters::Rejection;
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

/// Bodies up to this size are estimated inline, on the request's worker: their exact count takes
/// well under a millisecond (at worst a few, for adversarial text). Larger ones go to the bounded
/// estimate pool ([`crate::offload`]), lower bound first.
const INLINE_ESTIMATE_BYTES: usize = 16 * 1024;

/// Estimates the request's cost into `ctx.req.cost` and returns the body to send upstream. A large
/// body is estimated off the request workers: first a lower bound from the byte length of its texts
/// (a request that can never fit a limit is refused here, its prompt never tokenized), then the
/// exact count.
pub async fn prepare(
    head: &RequestHeader,
    ctx: &mut Ctx,
    route: &CompiledRoute,
    up: &Upstream,
    rest: &str,
    body: Bytes,
) -> Result<Bytes, Rejection> {
    let mut path = String::with_capacity(up.path_prefix.len() + rest.len());
    path.push_str(&up.path_prefix);
    path.push_str(rest);
    let surface = Surface::classify(route.dialect, &path);
    if !surface.is_metered() {
        return Ok(body);
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
    let (cost, rewritten) = if body.len() <= INLINE_ESTIMATE_BYTES {
        let cost = usage::estimate(surface, &model, &body, sse_requested);
        let rewritten = include_usage(surface, &cost, &body);
        (cost, rewritten)
    } else {
        estimate_large(ctx, route, surface, &model, &body, sse_requested).await?
    };
    ctx.req.cost = Some(TokenCost {
        prompt: cost.prompt_tokens,
        max_completion: cost.max_completion,
    });
    let strip = rewritten.is_some();
    ctx.metering = Some(Metering {
        surface,
        model,
        prompt_estimate: cost.prompt_tokens,
        incremental: cost.incremental,
        strip,
        tracker: None,
        settled: false,
    });
    Ok(rewritten.map_or(body, Bytes::from))
}

/// The body with `include_usage` set, for an OpenAI-shaped stream whose caller did not ask for usage.
fn include_usage(surface: Surface, cost: &usage::RequestCost, body: &[u8]) -> Option<Vec<u8>> {
    (cost.stream && !cost.wants_usage && surface.supports_include_usage())
        .then(|| usage::with_include_usage(body))
        .flatten()
}

/// The estimate (and `include_usage` rewrite) of a large body, on the estimate pool: the lower
/// bound, the chain's `on_cost_floor` check, then the exact count unless the bound was exact.
async fn estimate_large(
    ctx: &mut Ctx,
    route: &CompiledRoute,
    surface: Surface,
    model: &str,
    body: &Bytes,
    sse_requested: bool,
) -> Result<(usage::RequestCost, Option<Vec<u8>>), Rejection> {
    let counters = crate::metrics::estimates();
    if let Some(m) = counters {
        m.offloaded.inc();
    }
    let (b, m) = (body.clone(), model.to_owned());
    let (floor, exact) =
        offload::run(move || usage::estimate_floor(surface, &m, &b, sse_requested)).await?;
    ctx.req.cost = Some(TokenCost {
        prompt: floor.prompt_tokens,
        max_completion: floor.max_completion,
    });
    if let Err(r) = route.chain.on_cost_floor(&mut ctx.req) {
        if let Some(m) = counters {
            m.bound_rejections.inc();
        }
        return Err(r);
    }
    let (b, m) = (body.clone(), model.to_owned());
    offload::run(move || {
        let cost = if exact {
            floor
        } else {
            usage::estimate(surface, &m, &b, sse_requested)
        };
        (cost, include_usage(surface, &cost, &b))
    })
    .await
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
