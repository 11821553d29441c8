//! Webhook endpoints and at-least-once delivery: every event goes to every
//! endpoint that enabled it, signed, after a small seeded random delay (so
//! deliveries can overtake each other), retried with exponential backoff
//! until a 2xx or `max_attempts`. Faults can duplicate or drop deliveries.
//! Each delivery is recorded in a log that `GET /_stub/state` dumps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use serde::Serialize;

use super::model::{unix_now, Event};
use super::signature::{sign, SIGNATURE_HEADER};
use crate::gen::mix;

/// How deliveries are paced and retried.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// Wait before retry k (1-based) is `backoff_base * 2^(k-1)`.
    pub backoff_base: Duration,
    /// Longest wait between two attempts.
    pub backoff_max: Duration,
    /// Attempts per delivery (the first one included).
    pub max_attempts: u32,
    /// Each delivery first waits a seeded random delay in `[0, max_jitter]`.
    pub max_jitter: Duration,
    /// Seed of those delays.
    pub seed: u64,
    /// Per-attempt HTTP timeout.
    pub request_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_attempts: 8,
            max_jitter: Duration::from_millis(200),
            seed: 0,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Wait before retry `attempt` (1 = the first retry): exponential, capped.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

/// The seeded delay before delivery number `seq`, in `[0, max]`.
pub fn delivery_delay(seed: u64, seq: u64, max: Duration) -> Duration {
    let span = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(mix(seed ^ mix(seq.wrapping_add(1))) % (span + 1))
}

/// A registered webhook endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub id: String,
    pub object: &'static str,
    pub url: String,
    pub enabled_events: Vec<String>,
    pub secret: String,
    pub status: &'static str,
    pub created: i64,
}

impl Endpoint {
    fn wants(&self, kind: &str) -> bool {
        self.enabled_events.iter().any(|e| e == "*" || e == kind)
    }
}

/// One delivery of one event to one endpoint, as the state dump shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub seq: u64,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    /// `pending`, `delivered`, `failed` (attempts exhausted) or `dropped` (fault).
    pub status: &'static str,
    pub attempts: u32,
    /// HTTP status of the last attempt (none: connection error or not sent).
    pub last_status: Option<u16>,
    pub delay_ms: u64,
}

/// Endpoints, the delivery log and the HTTP client that delivers.
pub struct Webhooks {
    pub cfg: WebhookConfig,
    client: reqwest::Client,
    seq: AtomicU64,
    pub endpoints: Mutex<Vec<Endpoint>>,
    pub log: Arc<Mutex<BTreeMap<u64, Delivery>>>,
}

impl Webhooks {
    pub fn new(cfg: WebhookConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .unwrap_or_default();
        Webhooks {
            cfg,
            client,
            seq: AtomicU64::new(0),
            endpoints: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    pub fn add(&self, ep: Endpoint) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ep);
    }

    pub fn reset(&self) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Logs and spawns `copies` deliveries of `event` to every endpoint that wants it.
    /// `drop_next` is asked once per delivery whether the fault plan drops it.
    pub fn dispatch(&self, event: &Event, copies: u32, mut drop_next: impl FnMut() -> bool) {
        let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|ep| ep.wants(&event.kind))
            .cloned()
            .collect();
        for ep in endpoints {
            for _ in 0..copies {
                let dropped = drop_next();
                self.start(event, &ep, body.clone(), dropped);
            }
        }
    }

    fn start(&self, event: &Event, ep: &Endpoint, body: Bytes, dropped: bool) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let delay = delivery_delay(self.cfg.seed, seq, self.cfg.max_jitter);
        let entry = Delivery {
            seq,
            event_id: event.id.clone(),
            event_type: event.kind.clone(),
            endpoint_id: ep.id.clone(),
            status: if dropped { "dropped" } else { "pending" },
            attempts: 0,
            last_status: None,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        };
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, entry);
        if dropped {
            return;
        }
        let job = Job {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            log: self.log.clone(),
            url: ep.url.clone(),
            secret: ep.secret.clone(),
            seq,
            body,
        };
        tokio::spawn(job.run(delay));
    }
}

/// One delivery in flight.
struct Job {
    client: reqwest::Client,
    cfg: WebhookConfig,
    log: Arc<Mutex<BTreeMap<u64, Delivery>>>,
    url: String,
    secret: String,
    seq: u64,
    body: Bytes,
}

impl Job {
    async fn attempt(&self) -> Option<u16> {
        // Signed at send time, like Stripe: a retry carries a fresh timestamp.
        let sig = sign(&self.secret, unix_now(), &self.body);
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sig)
            .body(self.body.clone())
            .send()
            .await;
        resp.ok().map(|r| r.status().as_u16())
    }

    fn record(&self, attempts: u32, last: Option<u16>, status: &'static str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        // A reset may have cleared the log meanwhile; then there is nothing to update.
        if let Some(d) = log.get_mut(&self.seq) {
            d.attempts = attempts;
            d.last_status = last;
            d.status = status;
        }
    }

    async fn run(self, delay: Duration) {
        tokio::time::sleep(delay).await;
        for attempt in 1..=self.cfg.max_attempts.max(1) {
            let status = self.attempt().await;
            if status.is_some_and(|s| (200..300).contains(&s)) {
                self.record(attempt, status, "delivered");
                return;
            }
            let last = attempt >= self.cfg.max_attempts;
            self.record(attempt, status, if last { "failed" } else { "pending" });
            if last {
                tracing::warn!(url = %self.url, attempts = attempt, "webhook delivery failed");
                return;
            }
            tokio::time::sleep(backoff(
                self.cfg.backoff_base,
                self.cfg.backoff_max,
                attempt,
            ))
            .await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(70);
        let waits: Vec<_> = (1..=5).map(|a| backoff(base, max, a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 70, 70]);
        assert_eq!(backoff(base, Duration::MAX, 40), base * (1 << 20));
    }

    #[test]
    fn delays_are_seeded_and_bounded() {
        let max = Duration::from_millis(50);
        let a: Vec<_> = (0..32).map(|s| delivery_delay(3, s, max)).collect();
        let b: Vec<_> = (0..32).map(|s| delivery_delay(3, s, max)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|d| *d <= max));
        assert!(
            a.windows(2).any(|w| w[0] > w[1]),
            "some later delivery goes first"
        );
        assert_eq!(delivery_delay(3, 0, Duration::ZERO), Duration::ZERO);
    }
}
