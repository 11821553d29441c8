//! Fault injection and provider-side rate limits, applied by one middleware
//! in front of every API route (not `/healthz` or `/metrics`).
//!
//! * [`FaultPlan`]: seeded error statuses (429/500/503), hangs, slow streams,
//!   mid-stream disconnects and malformed chunks. Configured per stub on
//!   [`crate::StubsConfig::faults`] or per request with the `x-stub-fault`
//!   header (same grammar, see [`FaultPlan::parse`]).
//! * [`RateLimits`]: requests and tokens per minute per provider key, over
//!   fixed one-minute windows of an injectable [`Clock`].

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;

use crate::common::{bearer, query_param, ApiError, Dialect, SharedCtx, Throttle};
use crate::gen::{mix, Hasher};

/// Request header carrying a per-request [`FaultPlan`].
pub const H_FAULT: &str = "x-stub-fault";

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// How long an injected hang lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    /// Never answer: the client has to time out (or disconnect).
    Forever,
    /// Wait this long, then answer normally.
    For(Duration),
}

/// Faults to inject into a stub's responses. The default injects nothing.
///
/// Error statuses are drawn per request: request number `k` (counted per
/// plan: per stub for a configured plan, per distinct header value for
/// `x-stub-fault`) draws `u = unit(mix(seed, k))` in `[0, 1)` and fails with
/// the first status whose cumulative rate exceeds `u`. The same seed
/// therefore yields the same failure sequence. The other faults apply to
/// every request the plan covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// `(status, rate)`: 429, 500 or 503 with a probability in `[0, 1]`.
    pub errors: Vec<(u16, f64)>,
    /// Seed of the failure sequence.
    pub seed: u64,
    /// Hold the request before answering.
    pub hang: Option<Hang>,
    /// Delay before every body chunk.
    pub slow_stream: Option<Duration>,
    /// Abort the connection after this many body chunks.
    pub disconnect_after: Option<u32>,
    /// Truncate the JSON of this body chunk (1-based).
    pub malformed_chunk: Option<u32>,
    /// Stop sending after this many body chunks and keep the connection open (a stalled stream).
    pub stall_after: Option<u32>,
    /// `retry-after` of injected 429s, in seconds (default: the provider window's reset).
    pub retry_after: Option<u64>,
}

/// Statuses a plan may inject.
pub const FAULT_STATUSES: [u16; 3] = [429, 500, 503];

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration `{s}` (use e.g. 200ms, 2s, 1.5s)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration `{s}`"));
    }
    Ok(Duration::from_micros((v * scale * 1000.0) as u64))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("bad rate `{s}` (expected a number in [0, 1])")),
    }
}

impl FaultPlan {
    /// A plan failing `rate` of requests with `status`.
    pub fn error(status: u16, rate: f64, seed: u64) -> FaultPlan {
        FaultPlan {
            errors: vec![(status, rate)],
            seed,
            ..FaultPlan::default()
        }
    }

    /// Whether the plan injects anything.
    pub fn is_empty(&self) -> bool {
        self == &FaultPlan::default()
    }

    /// Parses the `x-stub-fault` grammar: `;`-separated items, each one of
    ///
    /// * `status=CODE` or `status=CODE:RATE` (repeatable; CODE is 429, 500 or 503)
    /// * `rate=RATE` (for `status` items without their own rate; default 1)
    /// * `seed=N` (default 0)
    /// * `hang` (forever) or `hang=DURATION`
    /// * `slow-stream=DURATION`
    /// * `disconnect-after=N` (body chunks)
    /// * `malformed-chunk=N` (1-based body chunk)
    /// * `stall-after=N` (body chunks; then silence on an open connection)
    /// * `retry-after=SECONDS` (on injected 429s)
    ///
    /// Durations: `200ms`, `2s`, `1.5s`, `1m`, or a bare number of ms.
    pub fn parse(s: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::default();
        let mut default_rate = 1.0;
        let mut statuses: Vec<(u16, Option<f64>)> = Vec::new();
        for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (item.to_ascii_lowercase(), None),
            };
            fn need<'a>(k: &str, v: Option<&'a str>) -> Result<&'a str, String> {
                v.ok_or_else(|| format!("`{k}` needs a value"))
            }
            match k.as_str() {
                "status" => {
                    let v = need(&k, v)?;
                    let (code, rate) = match v.split_once(':') {
                        Some((c, r)) => (c, Some(parse_rate(r)?)),
                        None => (v, None),
                    };
                    let code: u16 = code
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad status `{code}`"))?;
                    if !FAULT_STATUSES.contains(&code) {
                        return Err(format!(
                            "unsupported status {code} (expected 429, 500 or 503)"
                        ));
                    }
                    statuses.push((code, rate));
                }
                "rate" => default_rate = parse_rate(need(&k, v)?)?,
                "seed" => {
                    let v = need(&k, v)?;
                    plan.seed = v.parse().map_err(|_| format!("bad seed `{v}`"))?;
                }
                "hang" => {
                    plan.hang = Some(match v {
                        None => Hang::Forever,
                        Some(d) => Hang::For(parse_duration(d)?),
                    })
                }
                "slow-stream" => plan.slow_stream = Some(parse_duration(need(&k, v)?)?),
                "disconnect-after" => {
                    let v = need(&k, v)?;
                    plan.disconnect_after =
                        Some(v.parse().map_err(|_| format!("bad chunk count `{v}`"))?);
                }
                "malformed-chunk" => {
                    let v = need(&k, v)?;
                    let n: u32 = v.parse().map_err(|_| format!("bad chunk index `{v}`"))?;
                    if n == 0 {
                        return Err("malformed-chunk is 1-based".into());
                    }
                    plan.malformed_chunk = Some(n);
                }
                "stall-after" => {
                    let v = need(&k, v)?;
                    plan.stall_after =
                        Some(v.parse().map_err(|_| format!("bad chunk count `{v}`"))?);
                }
                "retry-after" => {
                    let v = need(&k, v)?;
                    plan.retry_after = Some(v.parse().map_err(|_| format!("bad seconds `{v}`"))?);
                }
                other => return Err(format!("unknown fault `{other}`")),
            }
        }
        plan.errors = statuses
            .into_iter()
            .map(|(c, r)| (c, r.unwrap_or(default_rate)))
            .collect();
        Ok(plan)
    }

    /// The injected status for request number `k` under this plan, if any.
    pub fn decide(&self, k: u64) -> Option<u16> {
        if self.errors.is_empty() {
            return None;
        }
        let r = mix(self.seed ^ mix(k.wrapping_add(1)));
        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for &(status, rate) in &self.errors {
            acc += rate;
            if u < acc {
                return Some(status);
            }
        }
        None
    }

    fn touches_body(&self) -> bool {
        self.slow_stream.is_some()
            || self.disconnect_after.is_some()
            || self.malformed_chunk.is_some()
            || self.stall_after.is_some()
    }
}

impl FromStr for FaultPlan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultPlan::parse(s)
    }
}

/// Per-plan request counters.
#[derive(Default)]
pub struct FaultCounters {
    configured: AtomicU64,
    by_header: Mutex<HashMap<String, u64>>,
}

impl FaultCounters {
    fn next_configured(&self) -> u64 {
        self.configured.fetch_add(1, Ordering::Relaxed)
    }

    fn next_for_header(&self, h: &str) -> u64 {
        let mut map = self.by_header.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 && !map.contains_key(h) {
            map.clear();
        }
        let c = map.entry(h.to_string()).or_insert(0);
        let k = *c;
        *c += 1;
        k
    }
}

// ---------------------------------------------------------------------------
// Clock and limits
// ---------------------------------------------------------------------------

/// Time source of the rate limiter (milliseconds since the Unix epoch).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Provider-side limits per key, per one-minute window. `0` disables a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl Default for RateLimits {
    /// 10,000,000 RPM and 1,000,000,000 TPM per key: far above anything a
    /// test or a benchmark sends (a 2-core benchmark reaches ~3M requests a
    /// minute), so only configured limits ever refuse.
    fn default() -> Self {
        RateLimits {
            requests_per_minute: 10_000_000,
            tokens_per_minute: 1_000_000_000,
        }
    }
}

impl RateLimits {
    pub const UNLIMITED: RateLimits = RateLimits {
        requests_per_minute: 0,
        tokens_per_minute: 0,
    };
}

const WINDOW_MS: u64 = 60_000;
const LOW: u64 = u32::MAX as u64;
const SHARDS: usize = 16;
const MAX_KEYS_PER_SHARD: usize = 4096;

/// Usage of one key: each counter packs `window (32 bits) | count (32 bits)`
/// so a window roll-over and an increment are one compare-and-swap.
#[derive(Default)]
struct KeyState {
    requests: AtomicU64,
    tokens: AtomicU64,
}

fn used_in(v: u64, window: u64) -> u64 {
    if v >> 32 == window {
        v & LOW
    } else {
        0
    }
}

impl KeyState {
    /// Adds `n` in `window` unless that would pass `limit` (0 = none).
    /// Returns the count before the addition, or `Err(count)` when refused.
    fn add(counter: &AtomicU64, window: u64, n: u64, limit: Option<u64>) -> Result<u64, u64> {
        let mut cur = counter.load(Ordering::Relaxed);
        loop {
            let used = used_in(cur, window);
            if let Some(l) = limit {
                if used + n > l {
                    return Err(used);
                }
            }
            let next = (window << 32) | (used + n).min(LOW);
            match counter.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(used),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// The per-key limiter of one stub.
pub struct Limiter {
    limits: RateLimits,
    clock: Arc<dyn Clock>,
    shards: Vec<RwLock<HashMap<Box<str>, Arc<KeyState>>>>,
}

/// A request let through: the key's usage after it was counted.
pub struct Admitted {
    state: Arc<KeyState>,
    window: u64,
    requests_used: u64,
    tokens_used: u64,
    reset_ms: u64,
}

pub struct Rejected {
    pub kind: Throttle,
    pub limit: u64,
    pub used: u64,
    pub requests_used: u64,
    pub tokens_used: u64,
    pub reset_ms: u64,
}

impl Limiter {
    pub fn new(limits: RateLimits, clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            limits,
            clock,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn state(&self, key: &str) -> Arc<KeyState> {
        let h = Hasher::default().str(key).finish();
        let shard = &self.shards[(h as usize) % SHARDS];
        if let Some(s) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return s.clone();
        }
        let mut w = shard.write().unwrap_or_else(|e| e.into_inner());
        // Bound memory if a client sends endless distinct keys.
        if w.len() >= MAX_KEYS_PER_SHARD && !w.contains_key(key) {
            w.clear();
        }
        w.entry(key.into()).or_default().clone()
    }

    fn limit(v: u64) -> Option<u64> {
        (v > 0).then_some(v)
    }

    /// Counts one request for `key`, or refuses it (the key has used its
    /// requests, or its tokens, for this window).
    pub fn admit(&self, key: &str) -> Result<Admitted, Rejected> {
        let now = self.clock.now_ms();
        let window = now / WINDOW_MS;
        let reset_ms = WINDOW_MS - now % WINDOW_MS;
        let st = self.state(key);
        let tokens_used = used_in(st.tokens.load(Ordering::Acquire), window);
        let rpm = Self::limit(self.limits.requests_per_minute);
        let tpm = Self::limit(self.limits.tokens_per_minute);
        let requests_now = used_in(st.requests.load(Ordering::Acquire), window);
        if let Some(l) = tpm {
            if tokens_used >= l {
                return Err(Rejected {
                    kind: Throttle::Tokens,
                    limit: l,
                    used: tokens_used,
                    requests_used: requests_now,
                    tokens_used,
                    reset_ms,
                });
            }
        }
        match KeyState::add(&st.requests, window, 1, rpm) {
            Ok(before) => Ok(Admitted {
                state: st,
                window,
                requests_used: before + 1,
                tokens_used,
                reset_ms,
            }),
            Err(used) => Err(Rejected {
                kind: Throttle::Requests,
                limit: self.limits.requests_per_minute,
                used,
                requests_used: used,
                tokens_used,
                reset_ms,
            }),
        }
    }

    /// Charges the tokens a request used to its window.
    pub fn charge(&self, a: &mut Admitted, tokens: u64) {
        if tokens > 0 {
            let before = KeyState::add(&a.state.tokens, a.window, tokens, None).unwrap_or(0);
            a.tokens_used = before + tokens;
        }
    }
}

// ---------------------------------------------------------------------------
// Token accounting of the current request
// ---------------------------------------------------------------------------

tokio::task_local! {
    static USED: Cell<u64>;
}

/// Records tokens reported by the handler serving the current request.
pub fn record_tokens(n: u64) {
    let _ = USED.try_with(|c| c.set(c.get().saturating_add(n)));
}

// ---------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------

/// The error dialect of a path on a stub (compatibility layers differ).
fn dialect_for(base: Dialect, path: &str) -> Dialect {
    match base {
        Dialect::Google if path.starts_with("/v1beta/openai/") => Dialect::GoogleCompat,
        Dialect::DashScope if path.starts_with("/compatible-mode/") => Dialect::DashScopeCompat,
        d => d,
    }
}

/// The provider key of a request, as the stub's auth reads it.
fn credential<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Option<Cow<'a, str>> {
    if let Some(k) = bearer(headers) {
        return Some(Cow::Borrowed(k));
    }
    if let Some(k) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(Cow::Borrowed(k));
    }
    query_param(query, "key").map(Cow::Owned)
}

const RL_LIMIT_REQ: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const RL_LIMIT_TOK: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const RL_REM_REQ: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RL_REM_TOK: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RL_RESET_REQ: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const RL_RESET_TOK: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// OpenAI's duration format for reset headers: `20ms`, `1s`, `6m0s`, `8.64s`.
pub fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let mins = ms / 60_000;
    let rest = ms % 60_000;
    if mins > 0 {
        let _ = write!(out, "{mins}m");
    }
    let secs = rest / 1000;
    let frac = rest % 1000;
    if frac == 0 {
        let _ = write!(out, "{secs}s");
    } else {
        let f = format!("{frac:03}");
        let _ = write!(out, "{secs}.{}s", f.trim_end_matches('0'));
    }
    out
}

struct LimitView {
    limits: RateLimits,
    requests_used: u64,
    tokens_used: u64,
    reset_ms: u64,
}

fn hv(v: u64) -> HeaderValue {
    HeaderValue::from(v)
}

fn rate_limit_headers(h: &mut HeaderMap, v: &LimitView) {
    let l = v.limits;
    if l.requests_per_minute > 0 {
        h.insert(RL_LIMIT_REQ, hv(l.requests_per_minute));
        h.insert(
            RL_REM_REQ,
            hv(l.requests_per_minute.saturating_sub(v.requests_used)),
        );
        // Requests refill continuously at OpenAI: time until one is free.
        let per = WINDOW_MS / l.requests_per_minute.max(1);
        let reset = if v.requests_used >= l.requests_per_minute {
            v.reset_ms
        } else {
            per.min(v.reset_ms)
        };
        if let Ok(x) = HeaderValue::from_str(&openai_duration(reset)) {
            h.insert(RL_RESET_REQ, x);
        }
    }
    if l.tokens_per_minute > 0 {
        h.insert(RL_LIMIT_TOK, hv(l.tokens_per_minute));
        h.insert(
            RL_REM_TOK,
            hv(l.tokens_per_minute.saturating_sub(v.tokens_used)),
        );
        let reset = if v.tokens_used == 0 { 0 } else { v.reset_ms };
        if let Ok(x) = HeaderValue::from_str(&openai_duration(reset)) {
            h.insert(RL_RESET_TOK, x);
        }
    }
}

fn throttled(dialect: Dialect, kind: Throttle, limit: u64, used: u64, v: &LimitView) -> Response {
    let retry_after = v.reset_ms.div_ceil(1000).max(1);
    let mut resp = ApiError::throttled(kind, limit, used, retry_after).render(dialect);
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, hv(retry_after));
    if matches!(dialect, Dialect::OpenAi) {
        rate_limit_headers(h, v);
    }
    resp
}

/// Middleware: provider-side limits, then injected faults, then the handler
/// (whose token usage is charged to the key afterwards).
pub async fn control(State(ctx): State<SharedCtx>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(req).await;
    }
    let dialect = dialect_for(ctx.dialect, path);

    // 1. Provider-side limits, per key.
    let limits = ctx.limiter.limits;
    let mut admitted = None;
    if limits != RateLimits::UNLIMITED {
        if let Some(key) = credential(req.headers(), req.uri().query()) {
            match ctx.limiter.admit(&key) {
                Ok(a) => admitted = Some(a),
                Err(r) => {
                    let view = LimitView {
                        limits,
                        requests_used: r.requests_used,
                        tokens_used: r.tokens_used,
                        reset_ms: r.reset_ms,
                    };
                    return throttled(dialect, r.kind, r.limit, r.used, &view);
                }
            }
        }
    }

    // 2. Faults: the request's header, else the stub's configured plan.
    let header_plan = match req.headers().get(H_FAULT) {
        None => None,
        Some(v) => {
            let parsed = v
                .to_str()
                .map_err(|_| "not ASCII".to_string())
                .and_then(|s| FaultPlan::parse(s).map(|p| (p, s.to_string())));
            match parsed {
                Ok(p) => Some(p),
                Err(e) => {
                    return ApiError::bad_request(format!("Invalid {H_FAULT} header: {e}."))
                        .render(dialect)
                }
            }
        }
    };
    let plan: Option<(&FaultPlan, u64)> = match &header_plan {
        Some((p, raw)) => Some((p, ctx.fault_counters.next_for_header(raw))),
        None if !ctx.faults.is_empty() => Some((&ctx.faults, ctx.fault_counters.next_configured())),
        None => None,
    };
    let view = |a: &Option<Admitted>| LimitView {
        limits,
        requests_used: a.as_ref().map_or(0, |a| a.requests_used),
        tokens_used: a.as_ref().map_or(0, |a| a.tokens_used),
        reset_ms: a.as_ref().map_or(WINDOW_MS, |a| a.reset_ms),
    };
    let mut body_faults = None;
    if let Some((plan, k)) = plan {
        match plan.hang {
            Some(Hang::Forever) => futures::future::pending::<()>().await,
            Some(Hang::For(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        if let Some(status) = plan.decide(k) {
            let resp = match status {
                429 => {
                    let mut v = view(&admitted);
                    if let Some(secs) = plan.retry_after {
                        v.reset_ms = secs.saturating_mul(1000);
                    }
                    let limit = limits.requests_per_minute;
                    throttled(dialect, Throttle::Injected, limit, v.requests_used, &v)
                }
                500 => ApiError::server_error().render(dialect),
                _ => ApiError::overloaded().render(dialect),
            };
            return resp;
        }
        if plan.touches_body() {
            body_faults = Some(plan.clone());
        }
    }

    // 3. The handler, with its token usage charged to the key.
    let (mut resp, used) = USED
        .scope(Cell::new(0), async move {
            let r = next.run(req).await;
            (r, USED.with(Cell::get))
        })
        .await;
    if let Some(a) = admitted.as_mut() {
        ctx.limiter.charge(a, used);
    }
    if matches!(dialect, Dialect::OpenAi) && admitted.is_some() {
        rate_limit_headers(resp.headers_mut(), &view(&admitted));
    }
    match body_faults {
        Some(p) => with_body_faults(resp, p),
        None => resp,
    }
}

/// Truncates a chunk's last JSON value: drops the final non-whitespace byte.
fn malform(b: &Bytes) -> Bytes {
    let s = b.as_ref();
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(s.len());
    out.extend_from_slice(&s[..end]);
    out.extend_from_slice(&s[end.saturating_add(1).min(s.len())..]);
    Bytes::from(out)
}

fn with_body_faults(resp: Response, plan: FaultPlan) -> Response {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let stream = body.into_data_stream();
    let out = futures::stream::unfold((stream, 0u32, false), move |(mut st, i, done)| async move {
        if done {
            return None;
        }
        if plan.stall_after.is_some_and(|n| i >= n) {
            // Silence on an open connection: the client's idle timeout has to end it.
            futures::future::pending::<()>().await;
        }
        if plan.disconnect_after.is_some_and(|n| i >= n) {
            // Let the server write out the chunks sent so far, then abort.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let e =
                std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "injected disconnect");
            return Some((Err(e), (st, i, true)));
        }
        let chunk = match st.next().await? {
            Ok(c) => c,
            Err(e) => return Some((Err(std::io::Error::other(e)), (st, i, true))),
        };
        if let Some(d) = plan.slow_stream {
            tokio::time::sleep(d).await;
        }
        let chunk = if plan.malformed_chunk == Some(i + 1) {
            malform(&chunk)
        } else {
            chunk
        };
        Some((Ok(chunk), (st, i + 1, false)))
    });
    Response::from_parts(parts, Body::from_stream(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_header_grammar() {
        let p = FaultPlan::parse("status=503;rate=0.3;seed=42").unwrap();
        assert_eq!(p.errors, vec![(503, 0.3)]);
        assert_eq!(p.seed, 42);
        let p = FaultPlan::parse("status=429:0.1; status=500 ;rate=0.2").unwrap();
        assert_eq!(p.errors, vec![(429, 0.1), (500, 0.2)]);
        assert_eq!(FaultPlan::parse("hang").unwrap().hang, Some(Hang::Forever));
        assert_eq!(
            FaultPlan::parse("hang=1.5s").unwrap().hang,
            Some(Hang::For(Duration::from_millis(1500)))
        );
        let p = FaultPlan::parse("stall-after=2;retry-after=7").unwrap();
        assert_eq!((p.stall_after, p.retry_after), (Some(2), Some(7)));
        let p = FaultPlan::parse("slow-stream=200ms;disconnect-after=5;malformed-chunk=3").unwrap();
        assert_eq!(p.slow_stream, Some(Duration::from_millis(200)));
        assert_eq!(p.disconnect_after, Some(5));
        assert_eq!(p.malformed_chunk, Some(3));
        assert!(FaultPlan::parse("").unwrap().is_empty());
        for bad in [
            "status=404",
            "rate=2",
            "bogus",
            "seed=x",
            "malformed-chunk=0",
            "status",
        ] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions_follow_the_seed_and_rate() {
        let a = FaultPlan::error(503, 0.3, 42);
        let seq: Vec<_> = (0..1000).map(|k| a.decide(k)).collect();
        let again: Vec<_> = (0..1000).map(|k| a.decide(k)).collect();
        assert_eq!(seq, again);
        let fails = seq.iter().filter(|s| s.is_some()).count();
        assert!((230..370).contains(&fails), "{fails}");
        let b = FaultPlan::error(503, 0.3, 43);
        assert_ne!(seq, (0..1000).map(|k| b.decide(k)).collect::<Vec<_>>());
        assert!((0..100).all(|k| FaultPlan::error(429, 1.0, 0).decide(k) == Some(429)));
        assert!((0..100).all(|k| FaultPlan::error(429, 0.0, 0).decide(k).is_none()));
    }

    #[test]
    fn limiter_counts_requests_and_tokens_per_window() {
        let clock = ManualClock::new(120_000);
        let l = Limiter::new(
            RateLimits {
                requests_per_minute: 2,
                tokens_per_minute: 100,
            },
            clock.clone(),
        );
        let mut a = l.admit("k").ok().unwrap();
        assert_eq!(a.requests_used, 1);
        l.charge(&mut a, 60);
        assert!(l.admit("other").is_ok());
        let mut b = l.admit("k").ok().unwrap();
        l.charge(&mut b, 60);
        let r = l.admit("k").err().unwrap();
        assert_eq!(r.kind, Throttle::Tokens);
        clock.advance(Duration::from_secs(60));
        assert!(l.admit("k").is_ok());
        assert!(l.admit("k").is_ok());
        let r = l.admit("k").err().unwrap();
        assert_eq!(r.kind, Throttle::Requests);
        assert_eq!(r.reset_ms, 60_000);
    }

    #[test]
    fn openai_durations() {
        assert_eq!(openai_duration(20), "20ms");
        assert_eq!(openai_duration(1000), "1s");
        assert_eq!(openai_duration(8640), "8.64s");
        assert_eq!(openai_duration(360_000), "6m0s");
    }

    #[test]
    fn malform_drops_the_closing_brace() {
        assert_eq!(
            malform(&Bytes::from_static(b"data: {\"a\":1}\n\n")),
            "data: {\"a\":1\n\n"
        );
    }
}
