//! The validated limiter configuration: every policy checked and normalised (scope sorted, reserve
//! shares in per mille, defaults applied), ready for the limit engine to compile.

use crate::common::{AlgorithmKind, Dimension, OnStoreErrorSpec, QuotaWindow, Unit};
use crate::model::ModelPattern;
use std::time::Duration;

/// The validated limiter configuration.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub store: LimitStore,
    /// Every policy: shared ones first, then each tier's (tier limits carry `tiers: [that tier]`).
    pub policies: Vec<Policy>,
    /// Prepaid tokens credited per org (the top-level `balances:`), for the in-process store.
    pub balances: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum LimitStore {
    #[default]
    Memory,
    Redis(RedisSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub failures_to_open: u32,
    pub open_for: Duration,
    pub key_prefix: String,
    pub hash_tag: String,
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub unit: Unit,
    pub kind: PolicyKind,
    /// Sorted, deduplicated.
    pub scope: Vec<Dimension>,
    pub tiers: Vec<String>,
    pub models: Vec<ModelPattern>,
    pub providers: Vec<String>,
    pub routes: Vec<String>,
    /// Per mille kept back from each priority: [low, normal, high].
    pub reserve_permille: [u32; 3],
    pub on_store_error: OnStoreErrorSpec,
    /// Completion tokens reserved per choice when a request sets no cap.
    pub default_max_tokens: u64,
    /// An uncapped request is sent upstream with `default_max_tokens` as its cap.
    pub enforce_max_tokens: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyKind {
    Bucket {
        algorithm: AlgorithmKind,
        rate: u64,
        period: Duration,
        burst: u64,
        shape_max_wait: Option<Duration>,
    },
    Quota {
        window: QuotaWindow,
        limit: u64,
        timezone: String,
        soft: bool,
    },
    Concurrent {
        limit: u64,
    },
    /// The org's prepaid balance: no limit of its own (the credited amount is per org).
    Balance,
}

impl Policy {
    /// The advertised limit and its window in seconds (for `RateLimit-Policy` and `x-ratelimit-*`).
    pub fn quota_and_window(&self) -> (u64, u64) {
        match &self.kind {
            PolicyKind::Bucket { rate, period, .. } => (*rate, period.as_secs().max(1)),
            PolicyKind::Quota { window, limit, .. } => (
                *limit,
                match window {
                    QuotaWindow::Hourly => 3600,
                    QuotaWindow::Daily => 86_400,
                    QuotaWindow::Monthly => 2_592_000,
                },
            ),
            PolicyKind::Concurrent { limit } => (*limit, 0),
            PolicyKind::Balance => (0, 0),
        }
    }
}
