//! Revoked access tokens, by `jti`, as the control plane pushes them (`docs/config-protocol.md`, the
//! `revoked` event). One set per process, kept in the [`super::JwksCache`] so every `jwt` filter of every
//! config version reads the same one. The request path reads it without a lock (`ArcSwap`); a push
//! builds the next set beside it and swaps it in. Entries more than [`RETAIN_AFTER_EXP_SECS`] past
//! their token's `exp` are dropped at each push: by then the token is refused as expired anyway, as long
//! as the filter's `leeway_seconds` is below that (the default is 30 s).

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// How long past `exp` an entry is kept: longer than any sensible `leeway_seconds`, during which an
/// expired token still passes the time check. The control plane retains its entries as long.
pub const RETAIN_AFTER_EXP_SECS: i64 = 300;

/// The revoked token ids and when each token expires (unix seconds).
#[derive(Default)]
pub struct RevokedTokens {
    set: ArcSwap<HashMap<Box<str>, i64>>,
}

impl std::fmt::Debug for RevokedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RevokedTokens({})", self.len())
    }
}

impl RevokedTokens {
    /// Replaces the set with `entries` (`(jti, exp)`), leaving out those expired for more than
    /// [`RETAIN_AFTER_EXP_SECS`] at `now`; returns how many are kept.
    pub fn replace(&self, entries: impl IntoIterator<Item = (String, i64)>, now: i64) -> usize {
        let next: HashMap<Box<str>, i64> = entries
            .into_iter()
            .filter(|(_, exp)| exp.saturating_add(RETAIN_AFTER_EXP_SECS) > now)
            .map(|(jti, exp)| (jti.into_boxed_str(), exp))
            .collect();
        let n = next.len();
        self.set.store(Arc::new(next));
        n
    }

    /// Whether the token `jti` is revoked (lock-free; an empty set is not even hashed into).
    pub fn is_revoked(&self, jti: &str) -> bool {
        let set = self.set.load();
        !set.is_empty() && set.contains_key(jti)
    }

    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_push_replaces_the_set_and_drops_expired_entries() {
        let r = RevokedTokens::default();
        assert!(!r.is_revoked("a"));
        // `b` expired 400 s ago: gone; `a` 100 s ago: kept (a filter's leeway may still pass it).
        let now = 1_000;
        let kept = r.replace([("a".into(), now - 100), ("b".into(), now - 400)], now);
        assert_eq!(kept, 1);
        assert!(r.is_revoked("a") && !r.is_revoked("b"));
        r.replace([("c".into(), 300)], 150);
        assert!(!r.is_revoked("a") && r.is_revoked("c"));
        r.replace(Vec::new(), 150);
        assert!(r.is_empty());
    }
}
