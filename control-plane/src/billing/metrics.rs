//! Billing's metric families for the control plane's `/metrics` ([`crate::metrics::Collector`]):
//! `leaky_sagas{state}` (read from the database at scrape), `leaky_saga_steps_total{step,result}`,
//! `leaky_saga_needs_attention_total`, and the balance reconciler's
//! `leaky_reconcile_corrections_total{kind}` / `leaky_reconcile_passes_total`.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::PgPool;

use super::reconcile::ReconcileStats;
use super::{saga, store};
use crate::metrics::{counter, Collector, DB_READ_TIMEOUT};

/// Billing's collector; `reconcile` is the process's reconciler's counters (zero when none runs).
#[derive(Debug, Default)]
pub struct BillingMetrics {
    pub reconcile: Arc<ReconcileStats>,
}

#[async_trait]
impl Collector for BillingMetrics {
    async fn collect(&self, r: &Registry, pool: Option<&PgPool>) -> Result<(), prometheus::Error> {
        if let Some(pool) = pool {
            let read = tokio::time::timeout(DB_READ_TIMEOUT, store::saga_counts(pool)).await;
            if let Ok(Ok(sagas)) = read {
                let g = IntGaugeVec::new(Opts::new("leaky_sagas", "Sagas by state"), &["state"])?;
                for (state, n) in sagas {
                    g.with_label_values(&[state]).set(n);
                }
                r.register(Box::new(g))?;
            }
        }
        self.counters(r)
    }
}

impl BillingMetrics {
    /// The families that need no database.
    pub fn counters(&self, r: &Registry) -> Result<(), prometheus::Error> {
        counter(
            r,
            "leaky_saga_needs_attention_total",
            "Sagas this process moved to needs_attention",
            saga::needs_attention_total(),
        )?;
        let steps = IntCounterVec::new(
            Opts::new(
                "leaky_saga_steps_total",
                "Saga step attempts this process finished, by step and result",
            ),
            &["step", "result"],
        )?;
        for (step, result, n) in saga::step_counts() {
            steps.with_label_values(&[step, result]).inc_by(n);
        }
        r.register(Box::new(steps))?;
        let corrections = IntCounterVec::new(
            Opts::new(
                "leaky_reconcile_corrections_total",
                "Balance mirror corrections by the reconciler, by kind",
            ),
            &["kind"],
        )?;
        for (kind, n) in self.reconcile.corrections() {
            corrections.with_label_values(&[kind]).inc_by(n);
        }
        r.register(Box::new(corrections))?;
        counter(
            r,
            "leaky_reconcile_passes_total",
            "Reconciler passes this process ran",
            self.reconcile.passes(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn step_and_correction_labels_are_bounded() {
        let r = Registry::new();
        BillingMetrics::default().counters(&r).unwrap();
        let text = crate::metrics::encode(&r).unwrap();
        let steps = text
            .lines()
            .filter(|l| l.starts_with("leaky_saga_steps_total{"))
            .count();
        assert_eq!(steps, 16, "8 steps (with `other`) × 2 results: {text}");
        assert!(text.contains("leaky_reconcile_corrections_total{kind=\"debited_lowered\"} 0"));
        assert!(text.contains("leaky_saga_needs_attention_total"));
    }
}
