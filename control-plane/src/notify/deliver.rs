//! The delivery worker: claims due `notify.deliveries` rows (`FOR UPDATE SKIP LOCKED`, then a lease
//! `locked_until` on the injected clock, so a second worker — or replica — skips them until the lease
//! ends), sends each (webhook: a signed POST; email: SMTP), and records the outcome. A failure is
//! retried with exponential backoff and jitter ([`Policy::backoff`]) up to [`Policy::max_attempts`];
//! a crash mid-send leaves the row to be claimed again once its lease ends (at least once, never
//! lost). An endpoint whose last [`Policy::disable_after`] deliveries all failed (each out of
//! attempts) is disabled, audited, and its org's admins are told by email.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::email::Mailer;
use super::sign::{sign, EVENT_ID_HEADER, SIGNATURE_HEADER};
use super::triggers::{enqueue_for, Notification};
use super::{DeliveryResult as Outcome, NotifyStats};
use crate::audit::{self, Change};
use crate::clock::Clock;
use crate::outbox::NOTIFY_TOPIC;

/// Retry and disable rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts of one delivery before it is `failed` (12: with the waits below, about 15–18 h).
    pub max_attempts: i32,
    /// Consecutive failed deliveries (each out of attempts) that disable an endpoint (3).
    pub disable_after: i32,
    /// The wait after the first failed attempt (30 s); doubles per attempt up to `max_retry` (6 h).
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// How long a claim keeps other workers off a row (longer than `timeout` plus the bookkeeping).
    pub lease: Duration,
    /// One webhook request's or SMTP session's time limit.
    pub timeout: StdDuration,
    /// Rows claimed per round, and sent concurrently.
    pub batch: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            disable_after: 3,
            first_retry: Duration::seconds(30),
            max_retry: Duration::hours(6),
            lease: Duration::minutes(2),
            timeout: StdDuration::from_secs(10),
            batch: 16,
        }
    }
}

impl Policy {
    /// The wait after `failures` failed attempts (≥ 1): `first_retry × 2^(failures−1)` capped at
    /// `max_retry`, stretched by up to 25 % with `jitter` ∈ [0, 1) so retries of many deliveries
    /// spread out.
    pub fn backoff(&self, failures: i32, jitter: f64) -> Duration {
        let exp = u32::try_from(failures.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let base = self
            .first_retry
            .checked_mul(1 << exp)
            .unwrap_or(self.max_retry)
            .min(self.max_retry);
        let extra = base.num_milliseconds() as f64 * jitter.clamp(0.0, 1.0) / 4.0;
        base + Duration::milliseconds(extra as i64)
    }

    /// The longest [`Policy::backoff`] after `failures` (what a test moves its clock by).
    pub fn max_backoff(&self, failures: i32) -> Duration {
        self.backoff(failures, 1.0)
    }
}

/// A random number in [0, 1) for jitter (0 if the OS has no randomness to give).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.0,
    }
}

/// A claimed row.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    event_id: String,
    channel: String,
    target: String,
    org_id: Uuid,
    body: Value,
    attempts: i32,
}

/// What one send came to.
enum Sent {
    Ok,
    Err(String),
    /// Email without SMTP: recorded as `skipped`.
    Skipped,
    /// The endpoint is gone or disabled: recorded as `cancelled`.
    Cancelled,
}

/// A delivery worker (one per process; several processes may run one each).
pub struct Worker {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    mailer: Option<Mailer>,
    policy: Policy,
    stats: Arc<NotifyStats>,
}

impl Worker {
    /// A worker sending email through `mailer` (`None`: emails are recorded as skipped).
    pub fn new(
        pool: PgPool,
        clock: Arc<dyn Clock>,
        mailer: Option<Mailer>,
        policy: Policy,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            pool,
            clock,
            http,
            mailer,
            policy,
            stats: Arc::default(),
        }
    }

    /// The same worker counting into `stats` (the process's `/metrics`).
    pub fn with_stats(mut self, stats: Arc<NotifyStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Claims the due rows (at most a batch), sends them and records the outcomes; returns how many.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let rows: Vec<Claimed> = sqlx::query_as(
            "UPDATE notify.deliveries d SET locked_until = $2
             FROM (SELECT id FROM notify.deliveries
                   WHERE status = 'pending' AND next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until <= $1)
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
             WHERE d.id = due.id
             RETURNING d.id, d.event_id, d.channel, d.target, d.org_id, d.body, d.attempts",
        )
        .bind(now)
        .bind(now + self.policy.lease)
        .bind(self.policy.batch)
        .fetch_all(&self.pool)
        .await?;
        let n = rows.len();
        let results: Vec<Result<(), sqlx::Error>> = futures::stream::iter(rows)
            .map(|row| async move {
                let sent = self.send(&row).await;
                self.finish(&row, sent).await
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(n)
    }

    /// Runs rounds until `stop` resolves: at once again after a full batch, else after `poll`.
    pub async fn run(self, poll: StdDuration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let wait = match self.run_once().await {
                Ok(n) if n as i64 >= self.policy.batch => StdDuration::ZERO,
                Ok(_) => poll,
                Err(e) => {
                    tracing::warn!(error = %e, "notify: delivery round failed");
                    poll
                }
            };
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send(&self, row: &Claimed) -> Sent {
        if row.channel == "email" {
            return match &self.mailer {
                Some(m) => match m.send(&row.target, &row.body).await {
                    Ok(()) => Sent::Ok,
                    Err(e) => Sent::Err(e),
                },
                None => Sent::Skipped,
            };
        }
        let Ok(id) = Uuid::parse_str(&row.target) else {
            return Sent::Cancelled;
        };
        let endpoint: Result<Option<(String, String, bool)>, sqlx::Error> =
            sqlx::query_as("SELECT url, secret, enabled FROM notify.endpoints WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await;
        match endpoint {
            Ok(Some((url, secret, true))) => self.post(&url, &secret, row).await,
            Ok(_) => Sent::Cancelled,
            Err(e) => Sent::Err(format!("endpoint lookup: {e}")),
        }
    }

    /// POSTs the row's body to `url`, signed with `secret` at the clock's "now".
    async fn post(&self, url: &str, secret: &str, row: &Claimed) -> Sent {
        let body = match serde_json::to_vec(&row.body) {
            Ok(b) => b,
            Err(e) => return Sent::Err(e.to_string()),
        };
        let signature = sign(secret, self.clock.now().timestamp(), &body);
        let res = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "leaky-tokens-webhooks/1")
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, &row.event_id)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Sent::Ok,
            Ok(r) => Sent::Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Sent::Err(e.to_string()),
        }
    }

    /// Records `sent` for `row` (and, for a webhook, its endpoint's streak) in one transaction.
    async fn finish(&self, row: &Claimed, sent: Sent) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let mut tx = crate::db::begin(&self.pool).await?;
        let outcome = match sent {
            Sent::Ok => {
                set_status(&mut tx, row.id, "delivered", now, None).await?;
                if row.channel == "webhook" {
                    sqlx::query(
                        "UPDATE notify.endpoints SET consecutive_failures = 0 WHERE id::text = $1",
                    )
                    .bind(&row.target)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(Outcome::Delivered)
            }
            Sent::Skipped => {
                set_status(
                    &mut tx,
                    row.id,
                    "skipped",
                    now,
                    Some("SMTP is not configured"),
                )
                .await?;
                Some(Outcome::Skipped)
            }
            Sent::Cancelled => {
                set_status(
                    &mut tx,
                    row.id,
                    "cancelled",
                    now,
                    Some("the endpoint is gone or disabled"),
                )
                .await?;
                None
            }
            Sent::Err(why) => Some(self.failed(&mut tx, row, now, &why).await?),
        };
        tx.commit().await?;
        if let Some(o) = outcome {
            self.stats.count(&row.channel, o);
        }
        Ok(())
    }

    /// A failed attempt: retry later, or fail the delivery (and maybe disable its endpoint).
    async fn failed(
        &self,
        tx: &mut PgConnection,
        row: &Claimed,
        now: DateTime<Utc>,
        why: &str,
    ) -> Result<Outcome, sqlx::Error> {
        let attempts = row.attempts + 1;
        tracing::info!(delivery = %row.id, channel = %row.channel, attempts, error = why, "notify: delivery failed");
        if attempts < self.policy.max_attempts {
            let next = now + self.policy.backoff(attempts, jitter());
            sqlx::query(
                "UPDATE notify.deliveries SET attempts = $2, next_attempt_at = $3, locked_until = NULL, last_error = $4
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(row.id)
            .bind(attempts)
            .bind(next)
            .bind(why)
            .execute(&mut *tx)
            .await?;
            return Ok(Outcome::Retry);
        }
        set_status(&mut *tx, row.id, "failed", now, Some(why)).await?;
        if row.channel == "webhook" {
            self.count_failure(tx, row, now).await?;
        }
        Ok(Outcome::Failed)
    }

    /// Adds a failed delivery to the endpoint's streak; disables it at [`Policy::disable_after`].
    async fn count_failure(
        &self,
        tx: &mut PgConnection,
        row: &Claimed,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let streak: Option<(i32, String)> = sqlx::query_as(
            "UPDATE notify.endpoints SET consecutive_failures = consecutive_failures + 1
             WHERE id::text = $1 AND enabled RETURNING consecutive_failures, url",
        )
        .bind(&row.target)
        .fetch_optional(&mut *tx)
        .await?;
        match streak {
            Some((n, url)) if n >= self.policy.disable_after => {
                self.disable(tx, row, &url, n, now).await?;
                self.stats.count_disabled();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Disables the row's endpoint, cancels its pending deliveries, audits it and tells the org.
    async fn disable(
        &self,
        tx: &mut PgConnection,
        row: &Claimed,
        url: &str,
        failures: i32,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notify.endpoints SET enabled = false, disabled_at = $2 WHERE id::text = $1",
        )
        .bind(&row.target)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE notify.deliveries SET status = 'cancelled', locked_until = NULL, finished_at = $2
             WHERE channel = 'webhook' AND target = $1 AND status = 'pending'",
        )
        .bind(&row.target)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let detail = json!({"org": row.org_id, "url": url, "consecutive_failures": failures});
        let change = Change {
            actor: "notify",
            action: "webhook.disable",
            object_kind: "webhook",
            object_id: row.target.clone(),
            detail: detail.clone(),
        };
        audit::with_event(
            &mut *tx,
            NOTIFY_TOPIC,
            "webhook",
            "webhook.disabled",
            change,
        )
        .await?;
        tracing::warn!(endpoint = %row.target, %url, failures, "notify: webhook endpoint disabled");
        let n = Notification {
            event_id: format!("webhook.disabled:{}:{}", row.target, now.timestamp_micros()),
            org: row.org_id,
            kind: "webhook.disabled".into(),
            time: now,
            data: json!({"endpoint": row.target, "url": url, "consecutive_failures": failures}),
            email: true,
        };
        enqueue_for(&self.pool, tx, &n).await?;
        Ok(())
    }
}

async fn set_status(
    tx: &mut PgConnection,
    id: Uuid,
    status: &str,
    now: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notify.deliveries SET status = $2, attempts = attempts + 1, finished_at = $3, locked_until = NULL,
           last_error = $4 WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .bind(error)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_at_most_a_quarter_of_jitter() {
        let p = Policy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::seconds(30));
        assert_eq!(p.backoff(2, 0.0), Duration::seconds(60));
        assert_eq!(p.backoff(4, 0.0), Duration::seconds(240));
        assert_eq!(p.backoff(30, 0.0), Duration::hours(6));
        assert_eq!(p.max_backoff(1), Duration::milliseconds(37_500));
        assert!(p.backoff(3, 0.5) > p.backoff(3, 0.0) && p.backoff(3, 0.5) < p.max_backoff(3));
        let total: i64 = (1..p.max_attempts)
            .map(|n| p.backoff(n, 0.0).num_seconds())
            .sum();
        // About a day of retries before a delivery fails: 14.5 h without jitter, ≤ 18.1 h with it.
        assert!((12 * 3600..=20 * 3600).contains(&total), "{total}");
    }

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
