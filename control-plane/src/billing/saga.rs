//! The saga orchestrator: persisted, resumable, at most one worker per saga at a time. It runs every
//! saga kind (`purchase`, `subscription`): a kind gives its steps, compensations and finishing writes.
//!
//! A saga is a row of `billing.sagas` (state, the step to run next, its attempts, `data`) plus its step
//! history in `billing.saga_steps`. Running one step is three moves, each committed before the next:
//! (1) the attempt is recorded `started` (and the lease extended), (2) the side effect runs, through a
//! port, with an idempotency key derived from the saga id and the step, under a timeout, (3) its
//! outcome and the saga's next state commit in one transaction (with an outbox event when the saga
//! finishes). A process that dies anywhere leaves a row whose lease expires; the next worker re-runs the
//! step, which the idempotency key makes harmless.
//!
//! Failures: a transient one reschedules the step (`next_run_at`, exponential backoff) until its
//! attempts run out; a permanent one (a decline), or a forward step out of attempts, starts the
//! compensations; a compensation out of attempts ends in `needs_attention` with a reason (an error log
//! and [`needs_attention_total`]) — never silently.
//!
//! Workers claim due sagas with `FOR UPDATE SKIP LOCKED` and a lease (`locked_until`, on the injected
//! clock); every later write checks the lease is still ours, so two replicas never run one saga at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::ports::{BalanceMirror, Credits, Payments, PortError};
use super::purchase::{self, PurchaseData};
use super::subscription::{self, SubscriptionData};
use crate::clock::Clock;
use crate::outbox;

static NEEDS_ATTENTION: AtomicU64 = AtomicU64::new(0);

/// `leaky_saga_needs_attention_total`: sagas this process moved to `needs_attention`.
pub fn needs_attention_total() -> u64 {
    NEEDS_ATTENTION.load(Ordering::Relaxed)
}

/// The steps counted by [`step_counts`]: a fixed list, so the metric's labels stay bounded.
const COUNTED_STEPS: [&str; 7] = [
    "authorize",
    "credit",
    "raise_balance",
    "capture",
    "reverse_credit",
    "release_balance",
    "cancel_payment",
];

/// Attempts this process finished, per step of [`COUNTED_STEPS`] (any other step counts as the
/// last slot, `other`) and result (succeeded, failed).
static STEPS: [[AtomicU64; 2]; 8] = [const { [const { AtomicU64::new(0) }; 2] }; 8];

fn count_step(step: &str, ok: bool) {
    let at = COUNTED_STEPS
        .iter()
        .position(|s| *s == step)
        .unwrap_or(COUNTED_STEPS.len());
    if let Some(slot) = STEPS.get(at).and_then(|r| r.get(usize::from(!ok))) {
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// `leaky_saga_steps_total{step,result}`: `(step, result, attempts)` for every step and result.
pub fn step_counts() -> Vec<(&'static str, &'static str, u64)> {
    let names = COUNTED_STEPS.iter().copied().chain(["other"]);
    names
        .zip(STEPS.iter())
        .flat_map(|(step, row)| {
            [
                (step, "succeeded", row[0].load(Ordering::Relaxed)),
                (step, "failed", row[1].load(Ordering::Relaxed)),
            ]
        })
        .collect()
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    NeedsAttention,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::NeedsAttention => "needs_attention",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Compensating,
            Self::Completed,
            Self::Compensated,
            Self::NeedsAttention,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    fn finished(self) -> bool {
        !matches!(self, Self::Running | Self::Compensating)
    }
}

/// Retry, timeout and lease settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts of a forward step before the saga compensates.
    pub max_attempts: i32,
    /// Attempts of a compensation before the saga needs attention.
    pub max_compensation_attempts: i32,
    /// Backoff after the first failed attempt; doubled per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// One side effect's time limit; past it the attempt counts as a transient failure.
    pub step_timeout: StdDuration,
    /// How long a claim is ours; a worker that dies holds a saga at most this long.
    pub lease: Duration,
    /// Sagas claimed per round.
    pub batch: i64,
    /// Claimed sagas driven at once (each waits on its provider calls; one slow saga must not hold
    /// up the others of its batch).
    pub concurrency: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_compensation_attempts: 10,
            backoff_base: Duration::seconds(1),
            backoff_max: Duration::seconds(60),
            step_timeout: StdDuration::from_secs(10),
            lease: Duration::seconds(30),
            batch: 16,
            concurrency: 16,
        }
    }
}

impl Policy {
    /// The wait after the `attempt`-th failure (1-based): base × 2^(attempt−1), capped.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let shift = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let factor = 1_i32 << shift;
        (self.backoff_base * factor).min(self.backoff_max)
    }
}

/// The ports the sagas call.
#[derive(Clone)]
pub struct Ports {
    pub payments: Arc<dyn Payments>,
    pub credits: Arc<dyn Credits>,
    pub mirror: Arc<dyn BalanceMirror>,
}

/// When a [`KillPoint`] stops the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhen {
    /// After the step's side effect, before its outcome is recorded.
    AfterEffect,
    /// After the outcome committed, before the next step starts.
    AfterCommit,
}

/// Test hook: the engine stops (as a crash would) the first time it reaches `step` at `when`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPoint {
    pub step: String,
    pub when: KillWhen,
}

/// Why a round of the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("saga data: {0}")]
    Data(#[from] serde_json::Error),
    /// The [`KillPoint`] was reached: the engine must not be used again (a fresh one resumes).
    #[error("killed at {0:?}")]
    Killed(KillPoint),
}

/// A claimed saga.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    kind: String,
    org_id: Uuid,
    state: String,
    step: String,
    attempts: i32,
    data: Value,
    deadline: DateTime<Utc>,
}

/// A saga's `data`, by its kind: the engine is the same for every kind, the steps are the kind's.
#[derive(Debug, Clone)]
enum Data {
    Purchase(PurchaseData),
    Subscription(SubscriptionData),
}

impl Data {
    fn parse(kind: &str, data: &Value) -> Result<Self, serde_json::Error> {
        match kind {
            purchase::KIND => Ok(Self::Purchase(serde_json::from_value(data.clone())?)),
            subscription::KIND => Ok(Self::Subscription(serde_json::from_value(data.clone())?)),
            other => Err(serde::de::Error::custom(format!(
                "unknown saga kind `{other}`"
            ))),
        }
    }

    fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::Purchase(d) => serde_json::to_value(d),
            Self::Subscription(d) => serde_json::to_value(d),
        }
    }

    fn next_forward(&self, step: &str) -> Option<&'static str> {
        match self {
            Self::Purchase(_) => purchase::next_forward(step),
            Self::Subscription(_) => subscription::next_forward(step),
        }
    }

    fn next_compensation(&self, step: &str) -> Option<String> {
        match self {
            Self::Purchase(d) => d.next_compensation(step),
            Self::Subscription(d) => d.next_compensation(step),
        }
    }

    /// Fixes the compensations owed after forward step `failed`; returns the first.
    fn start_compensations(&mut self, failed: &str) -> Option<String> {
        match self {
            Self::Purchase(d) => {
                d.compensations = purchase::compensations(failed);
                d.compensations.first().cloned()
            }
            Self::Subscription(d) => {
                d.compensations = subscription::compensations(failed);
                d.compensations.first().cloned()
            }
        }
    }

    /// The kind's own writes in the transaction of the step's outcome (and its finish).
    async fn record(
        &self,
        conn: &mut PgConnection,
        saga: &Claimed,
        state: SagaState,
        attempt: &Attempt<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        match self {
            Self::Purchase(d) => {
                purchase::record(&mut *conn, saga.id, d).await?;
                if state.finished() {
                    let event = purchase::event(saga.id, saga.org_id, d, state, attempt.reason);
                    outbox::append(conn, event).await?;
                }
                Ok(())
            }
            Self::Subscription(d) if state.finished() => {
                subscription::finish(conn, saga.id, d, state, attempt.reason, now).await
            }
            Self::Subscription(_) => Ok(()),
        }
    }
}

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// Run `step` now (still holding the lease).
    Step { state: SagaState, step: String },
    /// Try the same step again at `at`.
    Retry { at: DateTime<Utc> },
    /// Finished: completed, compensated or needs attention.
    Done(SagaState),
}

/// The orchestrator. Cheap to clone; run several (in one process or many) on one database.
#[derive(Clone)]
pub struct Engine {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    ports: Ports,
    policy: Policy,
    /// This worker's name in `locked_by`.
    me: String,
    kill: Option<KillPoint>,
    /// In-process wake-ups (the API's handlers notify it): [`Engine::run`] starts a round at once.
    wake: Arc<Notify>,
    /// Whether [`Engine::run`] also `LISTEN`s on [`WAKE_CHANNEL`] (wake-ups from any replica).
    listen: bool,
    /// Rounds [`Engine::run`] finished; it waits for a wake-up or the poll right after counting one.
    rounds: Arc<watch::Sender<u64>>,
}

/// A saga to insert (by the context that starts it, inside its own transaction).
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub id: Uuid,
    pub kind: &'static str,
    pub org_id: Uuid,
    pub first_step: &'static str,
    pub data: Value,
}

/// Inserts `saga`, due now, on `conn` (the caller's transaction): it runs once that commits.
pub async fn insert(
    conn: &mut PgConnection,
    saga: &NewSaga,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO billing.sagas (id, kind, org_id, state, step, attempts, next_run_at, deadline, data,
                                    created_at, updated_at)
         VALUES ($1, $2, $3, 'running', $4, 0, $5, $6, $7, $5, $5)",
    )
    .bind(saga.id)
    .bind(saga.kind)
    .bind(saga.org_id)
    .bind(saga.first_step)
    .bind(now)
    .bind(deadline)
    .bind(&saga.data)
    .execute(&mut *conn)
    .await?;
    // Delivered when the caller's transaction commits (never for a rolled-back saga): every
    // replica's worker listening on the channel starts a round at once instead of at its next poll.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes an unfinished saga due now (a webhook's hint: re-check it). Returns whether one was woken.
/// Wakes the workers of every replica (`pg_notify` on [`WAKE_CHANNEL`]) only when one was.
pub async fn wake(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let woken = sqlx::query(
        "WITH woken AS (
             UPDATE billing.sagas SET next_run_at = least(next_run_at, $2)
             WHERE id = $1 AND state IN ('running', 'compensating') RETURNING id)
         SELECT pg_notify($3, '') FROM woken",
    )
    .bind(id)
    .bind(now)
    .bind(WAKE_CHANNEL)
    .fetch_all(pool)
    .await?;
    Ok(woken.len() == 1)
}

/// The `LISTEN` channel a saga's creation or wake-up notifies (payload empty: a worker claims what is
/// due, it does not need to know which saga).
pub const WAKE_CHANNEL: &str = "leaky_billing_saga_due";

impl Engine {
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>, ports: Ports, policy: Policy) -> Self {
        Self {
            pool,
            clock,
            ports,
            policy,
            me: format!("saga-worker-{}", Uuid::new_v4()),
            kill: None,
            wake: Arc::default(),
            listen: true,
            rounds: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The same engine, woken by `wake` (the process's [`crate::http::ApiState::saga_wake`]).
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// The same engine, not listening on [`WAKE_CHANNEL`] (tests of the in-process wake-up alone).
    pub fn without_listener(mut self) -> Self {
        self.listen = false;
        self
    }

    /// Counts the rounds of [`Engine::run`]: once it reads `n`, the worker has finished round `n` and
    /// anything made due afterwards runs only if a wake-up (or the poll) starts another round.
    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// The same engine, stopping at `kill` (tests of crash recovery).
    pub fn with_kill(mut self, kill: KillPoint) -> Self {
        self.kill = Some(kill);
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Claims the due sagas (one batch) and drives them, up to `policy.concurrency` at once, each until
    /// it waits or finishes. Returns how many it claimed.
    ///
    /// Each saga has its own lease, checked on every write, so driving them side by side is as safe as
    /// one after another, and a batch takes about as long as its slowest saga rather than their sum.
    /// The first error (the database gone, a kill point) ends the round as a crash would: the sagas
    /// still in flight stop where they are and resume once their leases expire.
    pub async fn run_due(&self) -> Result<usize, SagaError> {
        let claimed = self.claim().await?;
        let n = claimed.len();
        futures::stream::iter(claimed.into_iter().map(Ok))
            .try_for_each_concurrent(self.policy.concurrency.max(1), |saga| {
                self.drive_or_park(saga)
            })
            .await?;
        Ok(n)
    }

    /// [`Engine::drive`]; unreadable data never gets better: the saga is parked visibly and the
    /// round goes on with the others.
    async fn drive_or_park(&self, saga: Claimed) -> Result<(), SagaError> {
        let id = saga.id;
        match self.drive(saga).await {
            Err(SagaError::Data(e)) => Ok(self.park(id, &format!("saga data: {e}")).await?),
            other => other,
        }
    }

    /// Moves a saga the engine cannot even read to `needs_attention`.
    async fn park(&self, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE billing.sagas SET state = 'needs_attention', needs_attention_reason = $3,
                    updated_at = $4, locked_by = NULL, locked_until = NULL
             WHERE id = $1 AND locked_by = $2",
        )
        .bind(id)
        .bind(&self.me)
        .bind(reason)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        NEEDS_ATTENTION.fetch_add(1, Ordering::Relaxed);
        tracing::error!(saga = %id, reason, "saga needs attention: its data cannot be read");
        Ok(())
    }

    /// [`Engine::run_due`] until nothing is due at the clock's "now"; returns how many claims it made.
    pub async fn run_until_idle(&self) -> Result<usize, SagaError> {
        let mut total = 0;
        loop {
            match self.run_due().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// The background worker: a round at start, then one whenever a saga is made due (in this process:
    /// [`Engine::with_wake`]; in any replica: `NOTIFY` on [`WAKE_CHANNEL`]) and at least every `poll`
    /// (the fallback should a notification be lost, e.g. while the listener reconnects), until
    /// `shutdown` resolves. The first round resumes every unfinished saga whose lease has expired.
    pub async fn run(self, poll: StdDuration, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(worker = %self.me, "saga worker starting");
        tokio::pin!(shutdown);
        let mut listener = None;
        loop {
            // Listening before the round: a saga committed during it is not missed.
            if self.listen && listener.is_none() {
                listener = listen(&self.pool).await;
            }
            if let Err(e) = self.run_until_idle().await {
                tracing::warn!(error = %e, "saga round failed; retrying next round");
            }
            self.rounds.send_modify(|r| *r += 1);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(poll) => {}
                () = self.wake.notified() => {}
                up = notified(&mut listener) => {
                    if !up {
                        listener = None;
                    }
                }
            }
        }
    }

    async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        let now = self.clock.now();
        sqlx::query_as(
            "UPDATE billing.sagas s SET locked_by = $1, locked_until = $3
             FROM (SELECT id FROM billing.sagas
                   WHERE state IN ('running', 'compensating') AND next_run_at <= $2
                     AND (locked_until IS NULL OR locked_until <= $2)
                   ORDER BY next_run_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
             WHERE s.id = due.id
             RETURNING s.id, s.kind, s.org_id, s.state, s.step, s.attempts, s.data, s.deadline",
        )
        .bind(&self.me)
        .bind(now)
        .bind(now + self.policy.lease)
        .bind(self.policy.batch)
        .fetch_all(&self.pool)
        .await
    }

    /// Runs `saga`'s steps until it waits, finishes, or the lease turns out lost.
    async fn drive(&self, mut saga: Claimed) -> Result<(), SagaError> {
        let mut data = Data::parse(&saga.kind, &saga.data)?;
        loop {
            let Some(seq) = self.begin(&saga).await? else {
                return Ok(());
            };
            let outcome = self.attempt(&saga, &mut data).await;
            self.maybe_kill(&saga.step, KillWhen::AfterEffect)?;
            let (next, reason) = self.decide(&saga, &mut data, &outcome);
            let step = Attempt {
                seq,
                outcome: &outcome,
                reason: reason.as_deref(),
            };
            if !self.commit(&saga, &data, &step, &next).await? {
                return Ok(());
            }
            self.maybe_kill(&saga.step, KillWhen::AfterCommit)?;
            match next {
                Next::Step { state, step } => {
                    saga.state = state.as_str().to_owned();
                    saga.step = step;
                    saga.attempts = 0;
                }
                Next::Retry { .. } | Next::Done(_) => return Ok(()),
            }
        }
    }

    fn maybe_kill(&self, step: &str, when: KillWhen) -> Result<(), SagaError> {
        match &self.kill {
            Some(k) if k.step == step && k.when == when => Err(SagaError::Killed(k.clone())),
            _ => Ok(()),
        }
    }

    /// Records the attempt `started` and extends the lease; `None` when the lease is no longer ours.
    async fn begin(&self, saga: &Claimed) -> Result<Option<i32>, sqlx::Error> {
        let now = self.clock.now();
        let mut tx = crate::db::begin(&self.pool).await?;
        let held = sqlx::query(
            "UPDATE billing.sagas SET locked_until = $3, updated_at = $4 WHERE id = $1 AND locked_by = $2",
        )
        .bind(saga.id)
        .bind(&self.me)
        .bind(now + self.policy.lease)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            tracing::warn!(saga = %saga.id, "saga lease lost; another worker has it");
            return Ok(None);
        }
        let direction = if saga.state == "compensating" {
            "compensate"
        } else {
            "forward"
        };
        let seq: i32 = sqlx::query_scalar(
            "INSERT INTO billing.saga_steps (saga_id, seq, step, direction, status, attempt, at)
             SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, 'started', $4, $5
             FROM billing.saga_steps WHERE saga_id = $1 RETURNING seq",
        )
        .bind(saga.id)
        .bind(&saga.step)
        .bind(direction)
        .bind(saga.attempts + 1)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    /// The side effect of `saga.step`, under the step timeout.
    async fn attempt(&self, saga: &Claimed, data: &mut Data) -> Result<Value, PortError> {
        let (ports, pool, id, name) = (&self.ports, &self.pool, saga.id, saga.step.as_str());
        let step = async move {
            match data {
                Data::Purchase(d) => purchase::run_step(ports, id, name, d).await,
                Data::Subscription(d) => subscription::run_step(pool, ports, id, name, d).await,
            }
        };
        match tokio::time::timeout(self.policy.step_timeout, step).await {
            Ok(outcome) => outcome,
            Err(_) => Err(PortError::Transient(format!(
                "timed out after {:?}",
                self.policy.step_timeout
            ))),
        }
    }
}

/// A listener on [`WAKE_CHANNEL`], or `None` (logged) when it cannot connect: the poll still runs
/// the sagas, and the next round tries again.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let connected = async {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen(WAKE_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match connected.await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "saga worker cannot LISTEN; it polls until it can");
            None
        }
    }
}

/// The next notification: true when one came, false when the listener failed (dropped, then
/// reconnected by the next round); never resolves without a listener.
async fn notified(listener: &mut Option<PgListener>) -> bool {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    match l.recv().await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "saga wake-up listener failed; reconnecting");
            false
        }
    }
}

/// One attempt's record: its history row and why the saga changed course, if it did.
struct Attempt<'a> {
    seq: i32,
    outcome: &'a Result<Value, PortError>,
    reason: Option<&'a str>,
}

impl Engine {
    /// The saga's next move after an attempt (and the reason, when it changes course).
    fn decide(
        &self,
        saga: &Claimed,
        data: &mut Data,
        outcome: &Result<Value, PortError>,
    ) -> (Next, Option<String>) {
        let compensating = saga.state == SagaState::Compensating.as_str();
        match (compensating, outcome) {
            (false, Ok(_)) => match data.next_forward(&saga.step) {
                Some(step) => (
                    Next::Step {
                        state: SagaState::Running,
                        step: step.to_owned(),
                    },
                    None,
                ),
                None => (Next::Done(SagaState::Completed), None),
            },
            (true, Ok(_)) => match data.next_compensation(&saga.step) {
                Some(step) => (
                    Next::Step {
                        state: SagaState::Compensating,
                        step,
                    },
                    None,
                ),
                None => (Next::Done(SagaState::Compensated), None),
            },
            (false, Err(e)) => self.forward_failure(saga, data, e),
            (true, Err(e)) => self.compensation_failure(saga, e),
        }
    }

    /// Retry a transient failure while attempts and the deadline allow; else compensate what may have
    /// happened, in reverse.
    fn forward_failure(
        &self,
        saga: &Claimed,
        data: &mut Data,
        e: &PortError,
    ) -> (Next, Option<String>) {
        let attempt = saga.attempts + 1;
        let at = self.clock.now() + self.policy.backoff(attempt);
        let why = match e {
            PortError::Transient(_)
                if attempt < self.policy.max_attempts && at <= saga.deadline =>
            {
                return (Next::Retry { at }, None)
            }
            PortError::Transient(m) => {
                format!("{} failed after {attempt} attempts: {m}", saga.step)
            }
            PortError::Declined { code, .. } => format!("payment declined: {code}"),
            PortError::Permanent(m) => format!("{} failed: {m}", saga.step),
        };
        let next = match data.start_compensations(&saga.step) {
            Some(step) => Next::Step {
                state: SagaState::Compensating,
                step,
            },
            None => Next::Done(SagaState::Compensated),
        };
        (next, Some(why))
    }

    /// Retry a compensation within its budget; past it (or on a permanent failure) the saga needs
    /// attention: it can neither finish nor undo itself.
    fn compensation_failure(&self, saga: &Claimed, e: &PortError) -> (Next, Option<String>) {
        let attempt = saga.attempts + 1;
        let permanent = matches!(e, PortError::Permanent(_));
        if attempt < self.policy.max_compensation_attempts && !permanent {
            let at = self.clock.now() + self.policy.backoff(attempt);
            return (Next::Retry { at }, None);
        }
        let why = format!(
            "compensation {} failed after {attempt} attempts: {e}",
            saga.step
        );
        (Next::Done(SagaState::NeedsAttention), Some(why))
    }

    /// Commits the attempt's outcome and the saga's next state in one transaction, if the lease is
    /// still ours (returns false when it is not: another worker owns the saga now).
    async fn commit(
        &self,
        saga: &Claimed,
        data: &Data,
        attempt: &Attempt<'_>,
        next: &Next,
    ) -> Result<bool, SagaError> {
        let now = self.clock.now();
        let current = SagaState::parse(&saga.state).unwrap_or(SagaState::Running);
        let (state, step, attempts, run_at) = match next {
            Next::Step { state, step } => (*state, step.as_str(), 0, now),
            Next::Retry { at } => (current, saga.step.as_str(), saga.attempts + 1, *at),
            Next::Done(state) => (*state, saga.step.as_str(), saga.attempts + 1, now),
        };
        let attention = (state == SagaState::NeedsAttention)
            .then_some(attempt.reason)
            .flatten();
        let reason = (state != SagaState::NeedsAttention)
            .then_some(attempt.reason)
            .flatten();
        let mut tx = crate::db::begin(&self.pool).await?;
        let held = sqlx::query(
            "UPDATE billing.sagas SET state = $3, step = $4, attempts = $5, next_run_at = $6, data = $7,
                    updated_at = $8, reason = coalesce(reason, $9), needs_attention_reason = $10,
                    locked_by = CASE WHEN $11 THEN locked_by END,
                    locked_until = CASE WHEN $11 THEN locked_until END
             WHERE id = $1 AND locked_by = $2",
        )
        .bind(saga.id)
        .bind(&self.me)
        .bind(state.as_str())
        .bind(step)
        .bind(attempts)
        .bind(run_at)
        .bind(data.to_value()?)
        .bind(now)
        .bind(reason)
        .bind(attention)
        .bind(matches!(next, Next::Step { .. }))
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            tracing::warn!(saga = %saga.id, "saga lease lost before commit; the next worker re-runs the step");
            return Ok(false);
        }
        record_outcome(&mut tx, saga.id, attempt, now).await?;
        data.record(&mut tx, saga, state, attempt, now).await?;
        tx.commit().await?;
        count_step(&saga.step, attempt.outcome.is_ok());
        if state == SagaState::NeedsAttention {
            NEEDS_ATTENTION.fetch_add(1, Ordering::Relaxed);
            tracing::error!(saga = %saga.id, kind = %saga.kind, reason = attention.unwrap_or(""),
                            "saga needs attention: it can neither finish nor compensate");
        }
        Ok(true)
    }
}

/// Marks the attempt's history row with its outcome.
async fn record_outcome(
    conn: &mut PgConnection,
    saga: Uuid,
    attempt: &Attempt<'_>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (status, detail) = match attempt.outcome {
        Ok(detail) => ("succeeded", detail.clone()),
        Err(e) => ("failed", json!({ "error": e.to_string() })),
    };
    sqlx::query(
        "UPDATE billing.saga_steps SET status = $3, detail = $4, at = $5 WHERE saga_id = $1 AND seq = $2",
    )
    .bind(saga)
    .bind(attempt.seq)
    .bind(status)
    .bind(detail)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_and_is_capped() {
        let p = Policy {
            backoff_base: Duration::seconds(1),
            backoff_max: Duration::seconds(10),
            ..Policy::default()
        };
        let waits: Vec<i64> = (1..=6).map(|a| p.backoff(a).num_seconds()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in [
            "running",
            "compensating",
            "completed",
            "compensated",
            "needs_attention",
        ] {
            assert_eq!(SagaState::parse(s).map(SagaState::as_str), Some(s));
        }
        assert_eq!(SagaState::parse("done"), None);
    }
}
