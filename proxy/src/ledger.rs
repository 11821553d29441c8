//! The request's ledger: it owns every hold one request takes and settles each exactly once.
//!
//! | hold | taken by | settled |
//! |---|---|---|
//! | filter holds (rate-limit reservation, concurrency slot) | `chain.on_admit`, returned as an `Admission` | with the usage, or at the end |
//! | tenant bulkhead permit | `exchange::tenant_slot` | freed at the end |
//! | [`UpstreamHolds`]: deployment bulkhead permit, quota charge (`tpm`) | the exchange (`exchange.rs`) | freed / settled at the end |
//!
//! Breaker admissions end inside the exchange (each attempt records its outcome) and never reach
//! the ledger.
//!
//! Holds are settled in exactly two places: [`Ledger::settle`], when the response body ends or is
//! cut (the provider's usage is known before the last bytes go out, so the caller's next request
//! already sees it), and [`Ledger::finish`], from `logging`, for whatever is left (the client left
//! mid-stream, the upstream failed, the route does not meter). Anything the ledger still owns when
//! it is dropped releases itself (each hold is an RAII guard), so a cancelled request leaks nothing.
//!
//! The ledger also owns the request's usage meter ([`Metering`]): settling is turning the meter's
//! reading into a [`Settlement`].
//!
//! A response-cache hit ([`Ledger::replaying`]) runs the stored answer through the same meter, so
//! the ledger reads the original usage; its holds settle with the route's `charge` fraction of it
//! (each count rounded up; `0`: free), while [`Ledger::usage`] stays the original (the usage record
//! says `cached` and carries both). A hit took no upstream holds, so no deployment quota is charged.

use crate::balancer::now_ms;
use crate::exchange::UpstreamHolds;
use crate::metering::Metering;
use bytes::Bytes;
use http::HeaderMap;
use leaky_filters::{Admission, Hold, Settlement};
use leaky_limit::{TokenUsage, UsageSource};
use leaky_resilience::BulkheadPermit;

/// Every hold of one request; see the module docs.
#[derive(Default)]
pub struct Ledger {
    tenant: Option<BulkheadPermit>,
    holds: Vec<Box<dyn Hold>>,
    upstream: Option<UpstreamHolds>,
    meter: Option<Metering>,
    /// The most completion tokens an admission hold reserved.
    reserved_completion: u64,
    /// The upstream response's status, once it arrived.
    upstream_status: Option<u16>,
    /// What the request used, once settled.
    usage: Option<TokenUsage>,
    /// Answered from the response cache: the share of the original usage its holds settle with,
    /// in millionths (integers, so 0.1 × 30 is 3, not 4 after a float rounds up).
    cache_charge: Option<u64>,
}

impl Ledger {
    /// The route meters this request: its usage settles the holds.
    pub fn meter(&mut self, meter: Metering) {
        self.meter = Some(meter);
    }

    /// Takes what admission returned; gives back the completion cap to send upstream.
    pub fn admit(&mut self, admission: Admission) -> Option<u64> {
        if self.holds.is_empty() {
            self.holds = admission.holds; // a move, no copy into a new buffer
        } else {
            self.holds.extend(admission.holds);
        }
        self.reserved_completion = self.reserved_completion.max(admission.reserved_completion);
        admission.completion_cap
    }

    pub fn tenant(&mut self, permit: Option<BulkheadPermit>) {
        self.tenant = permit;
    }

    pub fn upstream(&mut self, holds: UpstreamHolds) {
        self.upstream = Some(holds);
    }

    /// The answer is replayed from the response cache: holds settle with `charge` (0 to 1) times the
    /// original usage the meter reads from the replayed bytes.
    pub fn replaying(&mut self, charge: f64) {
        let ppm = (charge.clamp(0.0, 1.0) * PPM as f64).round() as u64;
        self.cache_charge = Some(ppm);
    }

    /// Answered from the response cache.
    pub fn is_replay(&self) -> bool {
        self.cache_charge.is_some()
    }

    /// What a cache hit charged the holds (prompt + completion) when that differs from its
    /// original usage; `None` for a live answer or a full charge.
    pub fn charged_tokens(&self) -> Option<u64> {
        let (u, charged) = (self.usage?, self.settlement().usage?);
        let (total, billed) = (
            u.prompt.saturating_add(u.completion),
            charged.prompt.saturating_add(charged.completion),
        );
        (self.is_replay() && billed != total).then_some(billed)
    }

    /// The body with the completion cap an admission asked for, in the metered dialect's field.
    pub fn cap(&self, cap: Option<u64>, body: Bytes) -> Bytes {
        match (cap, &self.meter) {
            (Some(cap), Some(m)) => m.cap(cap, body),
            _ => body,
        }
    }

    /// The upstream's response header arrived.
    pub fn on_response(&mut self, status: u16, headers: &HeaderMap) {
        self.upstream_status = Some(status);
        if let Some(m) = &mut self.meter {
            m.on_response(status, headers);
        }
    }

    /// The bytes to forward for an upstream chunk, after the meter saw it.
    pub fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.meter {
            Some(m) => m.on_chunk(chunk),
            None => chunk,
        }
    }

    /// The client left before a successful non-streamed answer was settled: the gateway reads it to
    /// its end for the provider's usage.
    pub fn drains_when_client_leaves(&self) -> bool {
        self.meter
            .as_ref()
            .is_some_and(|m| m.reads_to_the_end() && !m.is_settled())
    }

    /// The body ended or was cut: settles every hold with the usage (once; later calls do nothing)
    /// and returns the bytes a stripping meter still held, to forward last.
    pub async fn settle(&mut self) -> Bytes {
        let reserved = self.reserved_completion();
        let Some((held, usage)) = self.meter.as_mut().and_then(|m| m.finish_once(reserved)) else {
            return Bytes::new();
        };
        self.usage = usage;
        let outcome = self.settlement();
        for hold in std::mem::take(&mut self.holds) {
            hold.settle(&outcome).await;
        }
        held
    }

    /// The request is over (`logging`): frees the bulkhead slots, settles what `settle` did not
    /// (with the usage so far: what was generated before the client left, or the reservation), and
    /// corrects the deployment's quota charge.
    pub fn finish(&mut self) {
        self.tenant = None;
        if let Some(u) = &mut self.upstream {
            u.release_slot();
        }
        let reserved = self.reserved_completion();
        if let Some(m) = self.meter.as_ref().filter(|m| !m.is_settled()) {
            self.usage = m.usage(reserved);
        }
        let outcome = self.settlement();
        for hold in std::mem::take(&mut self.holds) {
            hold.finish(&outcome);
        }
        if let Some(u) = &mut self.upstream {
            u.settle(now_ms(), self.usage.map_or(0, |u| u.prompt + u.completion));
        }
    }

    fn settlement(&self) -> Settlement {
        let usage = match self.cache_charge {
            Some(ppm) => self.usage.map(|u| charged(u, ppm)),
            None => self.usage,
        };
        Settlement {
            status: self.upstream_status,
            usage,
        }
    }

    /// Completion tokens the request reserved: the most any hold reserved, at least its own cap.
    fn reserved_completion(&self) -> u64 {
        let own = self.meter.as_ref().and_then(Metering::max_completion);
        self.reserved_completion.max(own.unwrap_or(0))
    }

    /// The route metered this request.
    pub fn meters(&self) -> bool {
        self.meter.is_some()
    }

    /// What the request used, once settled.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Index of the deployment that answered, in its upstream's pool.
    pub fn deployment(&self) -> Option<usize> {
        self.upstream.as_ref().map(UpstreamHolds::index)
    }
}

/// One whole charge, in the millionths [`Ledger::replaying`] keeps.
const PPM: u64 = 1_000_000;

/// A hit's share of its original usage: each count times `charge`, rounded up. A stored answer
/// whose usage was a reservation is settled as counted: the holds must not round a free or
/// discounted hit back up to what they reserved.
fn charged(u: TokenUsage, ppm: u64) -> TokenUsage {
    let scale = |n: u64| (u128::from(n) * u128::from(ppm)).div_ceil(u128::from(PPM)) as u64;
    let source = match u.source {
        UsageSource::Reservation => UsageSource::Counted,
        s => s,
    };
    TokenUsage {
        prompt: scale(u.prompt),
        completion: scale(u.completion),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    /// Records how it was settled (`settle`, `finish`, `drop`) into a shared log.
    struct Probe(Arc<Mutex<Vec<String>>>, bool);

    #[async_trait]
    impl Hold for Probe {
        async fn settle(mut self: Box<Self>, o: &Settlement) {
            self.1 = true;
            self.0
                .lock()
                .unwrap()
                .push(format!("settle {:?}", o.status));
        }
        fn finish(mut self: Box<Self>, o: &Settlement) {
            self.1 = true;
            self.0
                .lock()
                .unwrap()
                .push(format!("finish {:?}", o.status));
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            if !self.1 {
                self.0.lock().unwrap().push("drop".into());
            }
        }
    }

    fn ledger_with_probe() -> (Ledger, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut l = Ledger::default();
        let cap = l.admit(Admission {
            completion_cap: Some(7),
            ..Admission::hold(Box::new(Probe(log.clone(), false)))
        });
        assert_eq!(cap, Some(7));
        (l, log)
    }

    #[tokio::test]
    async fn an_unmetered_request_settles_its_holds_once_at_the_end() {
        let (mut l, log) = ledger_with_probe();
        l.on_response(200, &HeaderMap::new());
        // No meter: nothing to settle with before the end.
        assert!(l.settle().await.is_empty());
        assert!(log.lock().unwrap().is_empty());
        l.finish();
        l.finish();
        assert_eq!(*log.lock().unwrap(), ["finish Some(200)"]);
    }

    #[test]
    fn a_dropped_ledger_releases_what_it_holds() {
        let (l, log) = ledger_with_probe();
        drop(l);
        assert_eq!(*log.lock().unwrap(), ["drop"]);
    }

    #[test]
    fn a_request_no_upstream_answered_settles_as_failed() {
        let (mut l, log) = ledger_with_probe();
        l.finish();
        assert_eq!(*log.lock().unwrap(), ["finish None"]);
        assert!(l.usage().is_none() && l.deployment().is_none() && !l.meters());
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_metered_request_settles_with_the_reported_usage_once() {
        let (mut l, log) = ledger_with_probe();
        l.meter(Metering::openai_chat(10, Some(100)));
        l.on_response(200, &json_headers());
        let body = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(&l.on_chunk(Bytes::from_static(body))[..], &body[..]);
        assert!(l.settle().await.is_empty());
        // The body's end and the completion phase both come by: only the first settles.
        assert!(l.settle().await.is_empty());
        l.finish();
        assert_eq!(*log.lock().unwrap(), ["settle Some(200)"]);
        let u = l.usage().unwrap();
        assert_eq!((u.prompt, u.completion), (12, 30));
        assert_eq!(u.source, leaky_limit::UsageSource::Reported);
    }

    #[tokio::test]
    async fn a_non_streamed_answer_cut_short_settles_at_least_its_reservation() {
        let (mut l, log) = ledger_with_probe();
        l.admit(Admission {
            reserved_completion: 300,
            ..Admission::default()
        });
        l.meter(Metering::openai_chat(10, Some(100)));
        l.on_response(200, &json_headers());
        l.on_chunk(Bytes::from_static(b"{\"choices\":["));
        // The client left before the end: the gateway would drain; here the body never ends.
        assert!(l.drains_when_client_leaves());
        l.finish();
        let u = l.usage().unwrap();
        assert_eq!(u.source, leaky_limit::UsageSource::Reservation);
        assert_eq!(u.completion, 300, "the most any hold reserved");
        assert_eq!(*log.lock().unwrap(), ["finish Some(200)"]);
    }

    type UsageLog = Arc<Mutex<Vec<(String, Option<TokenUsage>)>>>;

    /// Records the usage it was settled with (`settle` or `finish`).
    struct UsageProbe(UsageLog);

    #[async_trait]
    impl Hold for UsageProbe {
        async fn settle(self: Box<Self>, o: &Settlement) {
            self.0.lock().unwrap().push(("settle".into(), o.usage));
        }
        fn finish(self: Box<Self>, o: &Settlement) {
            self.0.lock().unwrap().push(("finish".into(), o.usage));
        }
    }

    /// A ledger replaying a stored non-streamed answer (12 prompt + 31 completion tokens) with
    /// `charge`, its hold probed.
    fn replay(charge: f64) -> (Ledger, UsageLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut l = Ledger::default();
        l.admit(Admission::hold(Box::new(UsageProbe(log.clone()))));
        l.meter(Metering::openai_chat(10, Some(100)));
        l.replaying(charge);
        l.on_response(200, &json_headers());
        let body = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":31,"total_tokens":43}}"#;
        assert_eq!(&l.on_chunk(Bytes::from_static(body))[..], &body[..]);
        (l, log)
    }

    fn tokens(u: Option<TokenUsage>) -> (u64, u64) {
        u.map_or((u64::MAX, u64::MAX), |u| (u.prompt, u.completion))
    }

    #[tokio::test]
    async fn a_free_hit_settles_its_holds_with_nothing_and_keeps_the_original_usage() {
        let (mut l, log) = replay(0.0);
        assert!(l.settle().await.is_empty());
        l.finish();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, "settle");
        assert_eq!(tokens(log[0].1), (0, 0), "the holds are charged nothing");
        assert_eq!(
            tokens(l.usage()),
            (12, 31),
            "the record keeps the original usage"
        );
        assert_eq!(l.usage().unwrap().source, UsageSource::Reported);
        assert_eq!(l.charged_tokens(), Some(0));
        assert!(
            l.is_replay() && l.deployment().is_none(),
            "no upstream holds on a hit"
        );
    }

    #[tokio::test]
    async fn a_half_charged_hit_settles_half_of_each_count_rounded_up() {
        let (mut l, log) = replay(0.5);
        l.settle().await;
        l.finish();
        assert_eq!(tokens(log.lock().unwrap()[0].1), (6, 16));
        assert_eq!(tokens(l.usage()), (12, 31));
        assert_eq!(l.charged_tokens(), Some(22));
    }

    #[tokio::test]
    async fn fractions_are_exact_and_a_full_charge_is_the_original_usage() {
        // 0.1 × 30 in floats is 3.0000000000000004: rounded up that would be 4.
        let u = TokenUsage {
            prompt: 30,
            completion: 0,
            source: UsageSource::Reported,
        };
        let mut l = Ledger::default();
        l.replaying(0.1);
        assert_eq!(charged(u, l.cache_charge.unwrap()).prompt, 3);
        let (mut l, log) = replay(1.0);
        l.settle().await;
        assert_eq!(tokens(log.lock().unwrap()[0].1), (12, 31));
        assert_eq!(
            l.charged_tokens(),
            None,
            "charged what it used: nothing to add"
        );
    }

    #[test]
    fn a_hit_whose_client_left_settles_its_share_at_the_end() {
        let (mut l, log) = replay(0.5);
        l.finish();
        assert_eq!(log.lock().unwrap()[0].0, "finish");
        assert_eq!(tokens(log.lock().unwrap()[0].1), (6, 16));
    }

    #[test]
    fn a_stored_reservation_is_charged_as_counted() {
        let u = TokenUsage {
            prompt: 10,
            completion: 300,
            source: UsageSource::Reservation,
        };
        let c = charged(u, 0);
        assert_eq!(
            (c.prompt, c.completion, c.source),
            (0, 0, UsageSource::Counted)
        );
    }

    #[tokio::test]
    async fn a_live_answer_is_not_a_replay() {
        let (mut l, _log) = ledger_with_probe();
        l.meter(Metering::openai_chat(10, Some(100)));
        l.on_response(200, &json_headers());
        l.on_chunk(Bytes::from_static(
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        ));
        l.settle().await;
        assert!(!l.is_replay());
        assert_eq!(l.charged_tokens(), None);
    }
}
