//! Token metering on routes that need it (a filter [wants the cost](leaky_filters::Filter::wants_cost)
//! or a reachable deployment has a `tpm` budget; see `snapshot.rs`): the request's estimated cost
//! (before `on_admit`; choices bounded by [`usage::MAX_CHOICES`]; large bodies on the bounded estimate
//! pool, refused early when a lower bound cannot fit), the OpenAI `include_usage` rewrite for streams
//! whose caller did not ask for usage (gated per org by the flag `stream_usage_injection`, resolved
//! once per config version into the route), the completion cap an `enforce_max_tokens` policy sends
//! upstream (after `on_admit`), and the response's usage. The request's [`Metering`] lives in its
//! ledger (`ledger.rs`), which settles the request's holds with its reading.
//!
//! The tenant is charged what the provider bills: its reported usage when the answer carries one
//! (the gateway keeps reading a non-streamed answer whose client left, see `relay.rs`); for a
//! stream without it, the tokens of the text streamed (`counted`); for a non-streamed answer without
//! it (client gone before its end, malformed, no usage), the whole reservation or the counted tokens
//! if more (`reservation`).

use crate::offload;
use crate::snapshot::{CompiledRoute, Upstream};
use bytes::Bytes;
use http::HeaderMap;
use leaky_filters::{RejectKind, Rejection, RequestCtx};
use leaky_limit::{TokenCost, TokenUsage, UsageSource};
use leaky_usage::{self as usage, Chunk, Surface, UsageTracker};
use pingora::http::RequestHeader;

pub struct Metering {
    surface: Surface,
    model: String,
    prompt_estimate: u64,
    incremental: bool,
    /// The request asked for a streamed answer.
    stream: bool,
    /// The request's completion cap, if it set one (all choices).
    max_completion: Option<u64>,
    /// The gateway added `include_usage`: strip the usage chunk from the caller's stream.
    strip: bool,
    tracker: Option<UsageTracker>,
    /// The usage was handed to the chain already.
    settled: bool,
}

/// Bodies up to this size are estimated inline, on the request's worker: their exact count takes
/// well under a millisecond (at worst a few, for adversarial text). Larger ones go to the bounded
/// estimate pool ([`crate::offload`]), lower bound first.
pub(crate) const INLINE_ESTIMATE_BYTES: usize = 16 * 1024;

/// What the routing step learnt of a metered request for its estimate: the surface its upstream
/// path names and, when the body was read as a plain chat request there (its `model` from the
/// same parse), that read: [`prepare`] then counts its tokens without parsing the body again.
pub struct Early<'a> {
    surface: Surface,
    read: Option<usage::ChatRead<'a>>,
}

impl<'a> Early<'a> {
    /// `read`: the body read by [`usage::ChatRead`] when it took it.
    pub fn new(
        route: &CompiledRoute,
        up: &Upstream,
        rest: &str,
        read: Option<usage::ChatRead<'a>>,
    ) -> Self {
        let mut path = String::with_capacity(up.path_prefix.len() + rest.len());
        path.push_str(&up.path_prefix);
        path.push_str(rest);
        let surface = Surface::classify(route.dialect, &path);
        Early { surface, read }
    }
}

/// DashScope's stream switch; a constant so the lookup does not parse the name.
const DASHSCOPE_SSE: http::HeaderName = http::HeaderName::from_static("x-dashscope-sse");

/// Estimates the request's cost into `req.cost` and returns the body to send upstream with the
/// request's meter (`None` when its endpoint carries no tokens). A large
/// body is estimated off the request workers: first a lower bound from the byte length of its texts
/// (a request that can never fit a limit is refused here, its prompt never tokenized), then the
/// exact count. Refuses a request for more than [`usage::MAX_CHOICES`] choices.
pub async fn prepare(
    head: &RequestHeader,
    req: &mut RequestCtx,
    route: &CompiledRoute,
    early: Early<'_>,
    body: Bytes,
) -> Result<(Bytes, Option<Metering>), Rejection> {
    let surface = early.surface;
    if !surface.is_metered() {
        return Ok((body, None));
    }
    let sse_requested = head
        .headers
        .get(&DASHSCOPE_SSE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enable"))
        || head
            .headers
            .get(http::header::ACCEPT)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let model = req.model.clone().unwrap_or_default();
    // Off for the org: the caller's body goes upstream untouched and a stream is settled on the
    // tokens counted from its text.
    let org = req.principal.as_ref().and_then(|p| p.org.as_deref());
    let inject = route.usage_injection.is_on(org);
    let (cost, rewritten) = if body.len() <= INLINE_ESTIMATE_BYTES {
        let cost = match (surface, &early.read) {
            (Surface::ChatCompletions(vendor), Some(read)) => read.estimate(vendor, &model),
            _ => usage::estimate(surface, &model, &body, sse_requested),
        };
        check_choices(surface, &cost)?;
        let rewritten = include_usage(inject, surface, &cost, &body);
        (cost, rewritten)
    } else {
        let est = Estimate {
            surface,
            model: &model,
            sse_requested,
            inject,
        };
        estimate_large(req, route, est, &body).await?
    };
    req.cost = Some(token_cost(&cost));
    let strip = rewritten.is_some();
    let meter = Metering {
        surface,
        model,
        prompt_estimate: cost.prompt_tokens,
        incremental: cost.incremental,
        stream: cost.stream,
        max_completion: cost.max_completion,
        strip,
        tracker: None,
        settled: false,
    };
    Ok((rewritten.map_or(body, Bytes::from), Some(meter)))
}

fn token_cost(cost: &usage::RequestCost) -> TokenCost {
    TokenCost {
        prompt: cost.prompt_tokens,
        max_completion: cost.max_completion,
        choices: cost.choices,
    }
}

/// More than [`usage::MAX_CHOICES`] choices is a 400 naming the dialect's field.
fn check_choices(surface: Surface, cost: &usage::RequestCost) -> Result<(), Rejection> {
    if cost.choices <= usage::MAX_CHOICES {
        return Ok(());
    }
    let field = usage::choices_field(surface);
    Err(Rejection::new(
        RejectKind::InvalidRequest,
        format!(
            "Invalid '{field}': {}. Expected a value between 1 and {}.",
            cost.choices,
            usage::MAX_CHOICES
        ),
    )
    .with_param(field))
}

/// The body with `include_usage` set, for an OpenAI-shaped stream whose caller did not ask for usage,
/// when `inject` (the org's `stream_usage_injection`) allows it.
fn include_usage(
    inject: bool,
    surface: Surface,
    cost: &usage::RequestCost,
    body: &[u8],
) -> Option<Vec<u8>> {
    (inject && cost.stream && !cost.wants_usage && surface.supports_include_usage())
        .then(|| usage::with_include_usage(body))
        .flatten()
}

/// What an estimate needs to know about the request besides its body.
struct Estimate<'a> {
    surface: Surface,
    model: &'a str,
    sse_requested: bool,
    /// The org's `stream_usage_injection`.
    inject: bool,
}

/// The estimate (and `include_usage` rewrite) of a large body, on the estimate pool: the lower
/// bound, the chain's `on_cost_floor` check, then the exact count unless the bound was exact.
async fn estimate_large(
    req: &mut RequestCtx,
    route: &CompiledRoute,
    est: Estimate<'_>,
    body: &Bytes,
) -> Result<(usage::RequestCost, Option<Vec<u8>>), Rejection> {
    let Estimate {
        surface,
        model,
        sse_requested,
        inject,
    } = est;
    let counters = crate::metrics::estimates();
    if let Some(m) = counters {
        m.offloaded.inc();
    }
    let (b, m) = (body.clone(), model.to_owned());
    // One parse for both passes: the bound, then (unless refused or exact) the count.
    let (floor, exact, parsed) = offload::run(move || {
        let parsed = usage::ParsedBody::parse(&b);
        let (floor, exact) = usage::estimate_floor_parsed(surface, &m, &parsed, sse_requested);
        (floor, exact, parsed)
    })
    .await?;
    check_choices(surface, &floor)?;
    req.cost = Some(token_cost(&floor));
    if let Err(r) = route.chain.on_cost_floor(req) {
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
            usage::estimate_parsed(surface, &m, &parsed, sse_requested)
        };
        (cost, include_usage(inject, surface, &cost, &b))
    })
    .await
}

impl Metering {
    /// After admission: the body with `cap`, the per-choice completion cap a policy enforces on an
    /// uncapped request, in the dialect's own field (`body` unchanged when it cannot be set).
    pub fn cap(&self, cap: u64, body: Bytes) -> Bytes {
        match usage::with_completion_cap(self.surface, &self.model, &body, cap) {
            Some(b) => Bytes::from(b),
            None => body,
        }
    }

    /// The request's own completion cap, if it set one (all choices).
    pub fn max_completion(&self) -> Option<u64> {
        self.max_completion
    }

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
    /// the usage (`None` when the answer was not a success). `reserved`: completion tokens reserved.
    pub fn finish_once(&mut self, reserved: u64) -> Option<(Bytes, Option<TokenUsage>)> {
        if self.settled {
            return None;
        }
        self.settled = true;
        let held = self
            .tracker
            .as_mut()
            .map_or_else(Bytes::new, |t| Bytes::from(t.on_end()));
        Some((held, self.usage(reserved)))
    }

    /// The usage so far: provider-reported; else counted from what was streamed; else, for a
    /// non-streamed answer that generates, the reservation (`reserved` completion tokens) or the
    /// counted tokens if more.
    pub fn usage(&self, reserved: u64) -> Option<TokenUsage> {
        self.tracker.as_ref().map(|t| {
            let u = t.finish(self.prompt_estimate);
            let source = if u.reported {
                UsageSource::Reported
            } else if self.reads_to_the_end() && self.surface.generates() {
                UsageSource::Reservation
            } else {
                UsageSource::Counted
            };
            let completion = match source {
                UsageSource::Reservation => u.completion_tokens.max(reserved),
                _ => u.completion_tokens,
            };
            TokenUsage {
                prompt: u.prompt_tokens,
                completion,
                source,
            }
        })
    }

    /// A successful non-streamed answer: the gateway reads it to its end (for its usage) even when
    /// the client has left. A stream whose client leaves is closed and settled as counted.
    pub fn reads_to_the_end(&self) -> bool {
        self.tracker.as_ref().is_some_and(|t| !t.is_event_stream()) && !self.stream
    }

    pub fn is_settled(&self) -> bool {
        self.settled
    }
}

#[cfg(test)]
impl Metering {
    /// A meter of a non-streamed OpenAI chat completion (`max_tokens`: `max_completion`).
    pub(crate) fn openai_chat(prompt_estimate: u64, max_completion: Option<u64>) -> Self {
        Metering {
            surface: Surface::ChatCompletions(usage::Vendor::OpenAi),
            model: "gpt-4o".into(),
            prompt_estimate,
            incremental: false,
            stream: false,
            max_completion,
            strip: false,
            tracker: None,
            settled: false,
        }
    }

    /// A meter of a streamed OpenAI chat completion; `strip`: the gateway added `include_usage`.
    pub(crate) fn openai_stream(prompt_estimate: u64, strip: bool) -> Self {
        Metering {
            stream: true,
            strip,
            ..Metering::openai_chat(prompt_estimate, None)
        }
    }
}
