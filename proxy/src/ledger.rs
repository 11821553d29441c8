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

use crate::balancer::now_ms;
use crate::exchange::UpstreamHolds;
use crate::metering::Metering;
use bytes::Bytes;
use http::HeaderMap;
use leaky_filters::{Admission, Hold, Settlement};
use leaky_limit::TokenUsage;
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
        Settlement {
            status: self.upstream_status,
            usage: self.usage,
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
}
