//! Traced transactions: [`begin`] is `pool.begin()` plus a client span per Postgres transaction,
//! a child of the task's current span (the HTTP request's server span, see `leaky_telemetry::scope`),
//! with the OTel database conventions: `db.system.name = "postgresql"`, `db.operation.name` (how the
//! transaction ended: `COMMIT`, `ROLLBACK`, or `BEGIN` when it never started), which is also the
//! span's name, and `code.file.path` / `code.line.number` of the `begin` call, which tell the
//! handler. Outside any span (background jobs) or with tracing off, nothing is recorded: the cost is
//! one task-local read.
//!
//! A transaction dropped without [`Tx::commit`] rolls back (sqlx's rule) and its span says
//! `ROLLBACK` without failing: the handler's error already marks the request. A failed `BEGIN` or
//! `COMMIT` fails the span (`error.type`), so it is exported at any sampling ratio.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;

use leaky_telemetry::{KeyValue, Span, SpanKind};
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::Transaction;

/// An open transaction and its span; derefs to the connection like `sqlx::Transaction`.
pub struct Tx<'c> {
    tx: Transaction<'c, Postgres>,
    span: TxSpan,
}

/// Begins a transaction on `pool` (see the module docs for its span).
#[track_caller]
pub fn begin(pool: &PgPool) -> impl Future<Output = Result<Tx<'static>, sqlx::Error>> + '_ {
    let at = Location::caller();
    let span = leaky_telemetry::child("BEGIN", SpanKind::Client).map(|mut s| {
        s.attr(KeyValue::new("db.system.name", "postgresql"));
        s.attr(KeyValue::new("code.file.path", at.file()));
        s.attr(KeyValue::new("code.line.number", i64::from(at.line())));
        s
    });
    async move {
        let mut span = TxSpan(span);
        match pool.begin().await {
            Ok(tx) => Ok(Tx { tx, span }),
            Err(e) => {
                span.end("BEGIN", Some(&e));
                Err(e)
            }
        }
    }
}

impl Tx<'_> {
    /// Commits, and ends the span as `COMMIT` (failed when the commit did).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Tx { tx, mut span } = self;
        let committed = tx.commit().await;
        span.end("COMMIT", committed.as_ref().err());
        committed
    }

    /// Rolls back, and ends the span as `ROLLBACK`.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Tx { tx, mut span } = self;
        let rolled = tx.rollback().await;
        span.end("ROLLBACK", rolled.as_ref().err());
        rolled
    }
}

impl Deref for Tx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// The span of one transaction; one dropped unended says `ROLLBACK` (what sqlx does on drop).
struct TxSpan(Option<Span>);

impl TxSpan {
    fn end(&mut self, operation: &'static str, error: Option<&sqlx::Error>) {
        let Some(mut s) = self.0.take() else {
            return;
        };
        s.rename(operation);
        s.attr(KeyValue::new("db.operation.name", operation));
        if let Some(e) = error {
            s.fail(error_type(e), true);
        }
        s.end();
    }
}

impl Drop for TxSpan {
    fn drop(&mut self) {
        self.end("ROLLBACK", None);
    }
}

/// `error.type` of a failed `BEGIN`/`COMMIT`: the SQLSTATE when Postgres answered, else the kind.
fn error_type(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .map_or_else(|| "database".into(), |c| c.into_owned()),
        sqlx::Error::PoolTimedOut => "pool_timeout".into(),
        sqlx::Error::Io(_) => "io".into(),
        _ => "sqlx".into(),
    }
}
