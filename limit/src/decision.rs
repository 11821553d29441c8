//! What the limiter decided for one policy of a request, and the sink a caller counts those decisions
//! with. Engine vocabulary: the `rate-limit` filter reports through it, the proxy's metrics count it.

use std::sync::Arc;

/// What the limiter decided for one policy of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Admitted after a shaping delay.
    Delayed,
    /// Admitted over a soft quota.
    SoftExceeded,
    Denied,
    /// The store could not answer and the policy fails closed.
    Unavailable,
}

impl Decision {
    pub const ALL: [Decision; 5] = [
        Decision::Allowed,
        Decision::Delayed,
        Decision::SoftExceeded,
        Decision::Denied,
        Decision::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Delayed => "delayed",
            Decision::SoftExceeded => "soft_exceeded",
            Decision::Denied => "denied",
            Decision::Unavailable => "unavailable",
        }
    }
}

/// Counts one decision: (index of the policy in `Limiter::policies`, decision). The proxy resolves
/// its metric handles once per config version.
pub type DecisionSink = Arc<dyn Fn(usize, Decision) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are metric label values: one per decision, distinct, in `ALL`'s order.
    #[test]
    fn every_decision_has_its_own_label() {
        let labels = Decision::ALL.map(Decision::as_str);
        assert_eq!(
            labels,
            [
                "allowed",
                "delayed",
                "soft_exceeded",
                "denied",
                "unavailable"
            ]
        );
    }
}
