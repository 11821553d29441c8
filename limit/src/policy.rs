//! Policies compiled once per config version, and the request's charges built from them.
//!
//! A request's applicable policies are its tier's limits plus every shared policy whose `match` holds
//! (tier, model, provider, route). Each policy contributes one bucket, keyed by the policy's name, a
//! fingerprint of its settings (an edited policy starts fresh buckets; an unchanged one keeps its state
//! across reloads) and the values of its `scope` dimensions.
//!
//! The request is described by a borrowed [`Subject`] the caller builds from its own context, so the
//! engine does not depend on the filter chain's types.

use super::algo::{Algorithm, CalendarWindow};
use super::store::{Charge, OnStoreError, Store};
use leaky_config::{
    AlgorithmKind, Dimension, Limits, OnStoreErrorSpec, Policy, PolicyKind, Priority, QuotaWindow,
    Tier, Unit,
};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The request as the limiter sees it: who calls and what it asks for, borrowed from the caller's
/// request context for one decision (building it allocates nothing). `None` where the request has
/// no such value: an anonymous caller, a model or provider not known yet, a request with no token
/// cost (`GET /models`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The principal's id (an API key id, a JWT's `jti` or subject): the `key` scope dimension.
    pub key: Option<&'a str>,
    pub user: Option<&'a str>,
    pub org: Option<&'a str>,
    /// The principal's tier; an anonymous caller or an unknown tier gets only the untiered policies.
    pub tier: Option<&'a str>,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub route: Option<&'a str>,
    /// The token cost estimate (or a lower bound of it, before the exact estimate).
    pub cost: Option<TokenCost>,
}

/// Why a config version's limits could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A quota's `timezone` is not an IANA time zone name.
    #[error("unknown time zone `{0}`")]
    UnknownTimeZone(String),
}

/// A request's token cost before the upstream call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCost {
    /// Estimated prompt tokens (the provider's tokenizer rules).
    pub prompt: u64,
    /// The request's completion cap for all its choices (`max_tokens` × `n` …), if it set one.
    pub max_completion: Option<u64>,
    /// Choices the provider generates (`n`, `candidateCount`, `parameters.n`; 0 counts as 1). A
    /// policy's `default_max_tokens` is per choice, so an uncapped request reserves it this many times.
    pub choices: u64,
}

impl TokenCost {
    /// The completion tokens reserved under a policy whose per-choice default is `default`.
    pub fn completion(&self, default: u64) -> u64 {
        self.max_completion
            .unwrap_or_else(|| default.saturating_mul(self.choices.max(1)))
    }
}

/// Where a request's settled token numbers come from: the usage record's own type, so the
/// limiter's settlement and the record never disagree (`Refunded` is the record's: a request that
/// settles no usage at all).
pub use leaky_wire::UsageSource;

/// Tokens a request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
    pub source: UsageSource,
}

/// A balance policy's algorithm per org, built once per config version from `balances:` (the
/// in-process store's `credited`; Redis keeps its own in the account's hash).
struct Balances {
    by_org: HashMap<String, Arc<Algorithm>>,
    /// Orgs with no entry, and callers with no org: nothing credited.
    none: Arc<Algorithm>,
}

/// One compiled policy.
pub struct CompiledPolicy {
    pub policy: Policy,
    pub name: Arc<str>,
    pub algo: Arc<Algorithm>,
    /// `name:fingerprint:`
    key_prefix: String,
    on_error: OnStoreError,
    /// The policy reserves completion tokens and enforces them: an uncapped request is sent upstream
    /// with its `default_max_tokens` as the completion cap.
    enforces_cap: bool,
    /// `unit: balance` only.
    balances: Option<Balances>,
}

impl CompiledPolicy {
    fn compile(policy: &Policy, balances: &BTreeMap<String, u64>) -> Result<Self, PolicyError> {
        let algo = algorithm(&policy.kind)?;
        let mut h = Sha256::new();
        h.update(format!("{:?}|{:?}|{:?}", algo, policy.unit, policy.scope).as_bytes());
        let fp = hex::encode(&h.finalize()[..4]);
        Ok(CompiledPolicy {
            name: Arc::from(policy.name.as_str()),
            key_prefix: format!("{}:{fp}:", policy.name),
            algo: Arc::new(algo),
            on_error: match policy.on_store_error {
                OnStoreErrorSpec::FailOpen => OnStoreError::FailOpen,
                OnStoreErrorSpec::FailClosed => OnStoreError::FailClosed,
                OnStoreErrorSpec::Local => OnStoreError::Local,
            },
            enforces_cap: policy.enforce_max_tokens
                && matches!(
                    policy.unit,
                    Unit::Tokens | Unit::CompletionTokens | Unit::Balance
                ),
            balances: (policy.kind == PolicyKind::Balance).then(|| Balances {
                by_org: balances
                    .iter()
                    .map(|(org, c)| (org.clone(), Arc::new(Algorithm::Balance { credited: *c })))
                    .collect(),
                none: Arc::new(Algorithm::Balance { credited: 0 }),
            }),
            policy: policy.clone(),
        })
    }

    fn applies(&self, s: &Subject<'_>) -> bool {
        let p = &self.policy;
        (p.models.is_empty()
            || s.model
                .is_some_and(|m| p.models.iter().any(|pat| pat.matches(m))))
            && (p.providers.is_empty()
                || s.provider
                    .is_some_and(|v| p.providers.iter().any(|x| x == v)))
            && (p.routes.is_empty() || s.route.is_some_and(|v| p.routes.iter().any(|x| x == v)))
    }

    /// Units this request reserves on the policy's bucket; `None` when the policy does not meter it
    /// (a token policy on a request with no token cost, e.g. `GET /models`).
    pub fn cost(&self, s: &Subject<'_>) -> Option<u64> {
        let cap = |c: &TokenCost| c.completion(self.policy.default_max_tokens);
        match self.policy.unit {
            Unit::Requests | Unit::ConcurrentRequests => Some(1),
            Unit::Tokens | Unit::Balance => s.cost.map(|c| c.prompt.saturating_add(cap(&c))),
            Unit::PromptTokens => s.cost.map(|c| c.prompt),
            Unit::CompletionTokens => s.cost.map(|c| cap(&c)),
        }
    }

    /// The bucket's algorithm: the policy's, or for a balance the org's account.
    fn algo_for(&self, s: &Subject<'_>) -> Arc<Algorithm> {
        match &self.balances {
            None => self.algo.clone(),
            Some(b) => s
                .org
                .and_then(|o| b.by_org.get(o))
                .unwrap_or(&b.none)
                .clone(),
        }
    }

    /// Appends the bucket key of `s` to `out`.
    fn write_key(&self, s: &Subject<'_>, out: &mut String) {
        if self.balances.is_some() {
            out.push_str(&super::balance::key(s.org.unwrap_or("")));
            return;
        }
        self.key_parts(s, |part| out.push_str(part));
    }

    fn key(&self, s: &Subject<'_>) -> Arc<str> {
        if self.balances.is_some() {
            // The org's account, whatever the policy's name or version: a reload keeps it. A
            // caller with no org charges an account nobody credits (`leaky:bal:{}`): refused.
            return Arc::from(super::balance::key(s.org.unwrap_or("")));
        }
        // `name:fingerprint:tag=value,…`, copied into the `Arc` from the stack when it fits (one
        // allocation, no `fmt`).
        let mut total = 0;
        self.key_parts(s, |part| total += part.len());
        let mut stack = [0u8; 192];
        let Some(buf) = stack.get_mut(..total) else {
            let mut k = String::with_capacity(total);
            self.key_parts(s, |part| k.push_str(part));
            return Arc::from(k);
        };
        let mut at = 0;
        self.key_parts(s, |part| {
            if let Some(dst) = buf.get_mut(at..at + part.len()) {
                dst.copy_from_slice(part.as_bytes());
            }
            at += part.len();
        });
        // Whole `&str`s were copied in: always UTF-8.
        Arc::from(std::str::from_utf8(buf).unwrap_or_default())
    }

    /// The pieces of the bucket key of `s`, in order.
    fn key_parts<'s>(&'s self, s: &Subject<'s>, mut put: impl FnMut(&'s str)) {
        put(&self.key_prefix);
        for (i, d) in self.policy.scope.iter().enumerate() {
            let (tag, v): (&str, Option<&str>) = match d {
                Dimension::Key => ("k=", s.key),
                Dimension::User => ("u=", s.user),
                Dimension::Org => ("o=", s.org),
                Dimension::Tier => ("t=", s.tier),
                Dimension::Model => ("m=", s.model),
                Dimension::Provider => ("p=", s.provider),
                Dimension::Route => ("r=", s.route),
            };
            if i > 0 {
                put(",");
            }
            put(tag);
            put(v.unwrap_or("-"));
        }
    }
}

fn algorithm(kind: &PolicyKind) -> Result<Algorithm, PolicyError> {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Ok(match kind {
        PolicyKind::Bucket {
            algorithm: AlgorithmKind::Leaky,
            rate,
            period,
            burst,
            shape_max_wait,
        } => Algorithm::Leaky {
            rate: *rate,
            period_ns: ns(*period),
            burst: *burst,
            shape_max_wait_ns: shape_max_wait.map(ns),
        },
        PolicyKind::Bucket {
            algorithm: AlgorithmKind::Token,
            rate,
            period,
            burst,
            ..
        } => Algorithm::Token {
            capacity: *burst,
            rate: *rate,
            period_ns: ns(*period),
        },
        PolicyKind::Quota {
            window,
            limit,
            timezone,
            soft,
        } => Algorithm::Window {
            limit: *limit,
            window: match window {
                QuotaWindow::Hourly => CalendarWindow::Hour,
                QuotaWindow::Daily => CalendarWindow::Day,
                QuotaWindow::Monthly => CalendarWindow::Month,
            },
            tz: timezone
                .parse()
                .map_err(|_| PolicyError::UnknownTimeZone(timezone.clone()))?,
            soft: *soft,
        },
        PolicyKind::Concurrent { limit } => Algorithm::Concurrency { limit: *limit },
        PolicyKind::Balance => Algorithm::Balance { credited: 0 },
    })
}

pub use super::settle::Clock;

/// The compiled policies of one config version and the store they charge.
///
/// Built only by [`Limiter::new`] (the tier index is private). The other fields are public for the
/// `rate-limit` filter, which drives the store and names policies in its headers and refusals; a
/// built limiter is shared behind an `Arc` and never changed.
pub struct Limiter {
    /// In config order; a [`Charges::which`] or decision index points here.
    pub policies: Vec<CompiledPolicy>,
    /// Per tier: indexes of the policies that may apply (its own limits and untiered or matching
    /// shared ones). Principals of unknown tiers, and anonymous requests, use `untiered`.
    by_tier: HashMap<String, (Priority, Vec<usize>)>,
    untiered: Vec<usize>,
    pub store: Arc<dyn Store>,
    /// Batched settlement off the request path, when the store is shared.
    pub settler: Option<super::settle::SettlerHandle>,
    /// The in-process store, when that is the store: settlements apply inline (no queue, no task), so
    /// the caller's next request sees them whatever the timing.
    pub inline: Option<Arc<super::memory::MemoryStore>>,
    pub clock: Clock,
}

impl Limiter {
    /// Compiles `limits` against `store`. Settlements after the response go through `settler` when
    /// given (batched, off the request path), else straight to the store.
    pub fn new(
        limits: &Limits,
        tiers: &BTreeMap<String, Tier>,
        store: Arc<dyn Store>,
        settler: Option<super::settle::SettlerHandle>,
        clock: Clock,
    ) -> Result<Self, PolicyError> {
        let policies = limits
            .policies
            .iter()
            .map(|p| CompiledPolicy::compile(p, &limits.balances))
            .collect::<Result<Vec<_>, _>>()?;
        let untiered: Vec<usize> = (0..policies.len())
            .filter(|i| policies[*i].policy.tiers.is_empty())
            .collect();
        let by_tier = tiers
            .iter()
            .map(|(name, t)| {
                let idx = (0..policies.len())
                    .filter(|i| {
                        let ts = &policies[*i].policy.tiers;
                        ts.is_empty() || ts.iter().any(|x| x == name)
                    })
                    .collect();
                (name.clone(), (t.priority, idx))
            })
            .collect();
        Ok(Limiter {
            policies,
            by_tier,
            untiered,
            store,
            settler,
            inline: None,
            clock,
        })
    }

    /// Settle inline on `memory` (which must be the limiter's store) instead of through the settler.
    pub fn with_inline_memory(mut self, memory: Arc<super::memory::MemoryStore>) -> Self {
        self.inline = Some(memory);
        self
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| &p.policy)
    }

    /// The policies that may apply to the request's principal, and the slot of its priority in
    /// `reserve_permille`.
    fn candidates(&self, s: &Subject<'_>) -> (usize, &[usize]) {
        let (priority, candidates) = match s.tier.and_then(|t| self.by_tier.get(t)) {
            Some((prio, idx)) => (*prio, idx.as_slice()),
            None => (Priority::Normal, self.untiered.as_slice()),
        };
        let slot = match priority {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        };
        (slot, candidates)
    }

    /// The first applicable policy on which the request's cost (`s.cost`, possibly a lower bound
    /// of it) can never be admitted, whatever its bucket's state, with that cost. No allocation and
    /// no store access.
    pub fn never_fits(&self, s: &Subject<'_>) -> Option<(usize, u64)> {
        let (slot, candidates) = self.candidates(s);
        candidates.iter().find_map(|&i| {
            let p = &self.policies[i];
            if !p.applies(s) {
                return None;
            }
            let cost = p.cost(s)?;
            let reserve = p.policy.reserve_permille[slot];
            (!p.algo.can_ever_fit(cost, reserve)).then_some((i, cost))
        })
    }

    /// The request's charges, with the index of each one's policy.
    pub fn charges(&self, s: &Subject<'_>) -> Charges {
        self.build_charges(s, |p, _| p.key(s))
    }

    /// [`charges`](Self::charges), with each bucket key's text (and the charge's algorithm) handed to
    /// `resolve`, which returns the key to charge: e.g. the in-process store's own `Arc` of it, so an
    /// existing bucket's key is not allocated again.
    pub fn charges_resolved(
        &self,
        s: &Subject<'_>,
        mut resolve: impl FnMut(&str, &Arc<Algorithm>) -> Arc<str>,
    ) -> Charges {
        thread_local! {
            /// The key text's buffer, reused (taken out while in use: `resolve` may re-enter).
            static TEXT: Cell<String> = const { Cell::new(String::new()) };
        }
        let mut text = TEXT.take();
        let charges = self.build_charges(s, |p, algo| {
            text.clear();
            p.write_key(s, &mut text);
            resolve(&text, algo)
        });
        TEXT.set(text);
        charges
    }

    fn build_charges(
        &self,
        s: &Subject<'_>,
        mut key: impl FnMut(&CompiledPolicy, &Arc<Algorithm>) -> Arc<str>,
    ) -> Charges {
        let (slot, candidates) = self.candidates(s);
        let mut which = Vec::with_capacity(candidates.len());
        let mut charges = Vec::with_capacity(candidates.len());
        let mut completion = 0;
        let mut cap: Option<u64> = None;
        for &i in candidates {
            let p = &self.policies[i];
            if !p.applies(s) {
                continue;
            }
            let Some(cost) = p.cost(s) else { continue };
            if let (Some(c), true) = (s.cost, p.policy.unit.reserves_completion()) {
                completion = completion.max(c.completion(p.policy.default_max_tokens));
                if p.enforces_cap && c.max_completion.is_none() {
                    let d = p.policy.default_max_tokens;
                    cap = Some(cap.map_or(d, |x| x.min(d)));
                }
            }
            which.push(i);
            let algo = p.algo_for(s);
            charges.push(Charge {
                key: key(p, &algo),
                algo,
                cost,
                reserve: p.policy.reserve_permille[slot],
                on_error: p.on_error,
            });
        }
        Charges {
            which,
            charges,
            completion,
            cap,
        }
    }
}

/// What a request reserves: the policies that apply and their charges, side by side.
pub struct Charges {
    pub which: Vec<usize>,
    pub charges: Vec<Charge>,
    /// The most completion tokens any applicable token policy reserved.
    pub completion: u64,
    /// The per-choice completion cap to send upstream (an uncapped request under a policy with
    /// `enforce_max_tokens`; the smallest such policy's `default_max_tokens`).
    pub cap: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// Keys are built on the stack up to its size and in a `String` past it: the same text either way.
    #[test]
    fn keys_are_whole_on_either_side_of_the_stack_buffer() {
        let yaml = "providers:
  openai: { base_url: http://127.0.0.1:1 }
routes:
  - { name: v1, prefix: /v1, upstream: { provider: openai } }
tiers: { pro: {} }
limits:
  policies:
    - { name: all, unit: requests, rate: 9, per: minute,
        scope: [key, user, org, tier, model, provider, route] }
    - { name: prepaid, unit: balance }
balances: { acme: 10 }
";
        let dir = std::path::Path::new("/");
        let c =
            leaky_config::load_text(dir, yaml, dir, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(super::super::memory::MemoryStore::new());
        let l = Limiter::new(&c.limits, &c.tiers, store, None, Arc::new(|| 0)).unwrap();
        let p = &l.policies[0];
        for n in 0..300 {
            let long = "é".repeat(n / 2) + &"x".repeat(n % 2);
            let s = Subject {
                key: Some(&long),
                user: Some("u1"),
                org: None,
                tier: Some("pro"),
                model: Some("gpt-4o"),
                provider: Some("openai"),
                route: Some("v1"),
                cost: None,
            };
            let expected = format!(
                "{}k={long},u=u1,o=-,t=pro,m=gpt-4o,p=openai,r=v1",
                p.key_prefix
            );
            assert_eq!(&*p.key(&s), expected);
            let mut text = String::new();
            p.write_key(&s, &mut text);
            assert_eq!(text, expected);
            // The resolved charges spell the same keys, and charge what the resolver returns.
            let mut seen = Vec::new();
            let c = l.charges_resolved(&s, |k, _| {
                seen.push(k.to_string());
                Arc::from(k)
            });
            // (No cost: the balance does not meter this request.)
            assert_eq!(seen, std::slice::from_ref(&expected));
            assert_eq!(&*c.charges[0].key, expected);
            assert_eq!(c.which, l.charges(&s).which);
        }
        // A balance's key is its org's account.
        let s = Subject {
            org: Some("acme"),
            cost: Some(TokenCost {
                prompt: 1,
                max_completion: Some(1),
                choices: 1,
            }),
            ..Subject::default()
        };
        let c = l.charges_resolved(&s, |k, _| Arc::from(k));
        assert_eq!(c.which, [0, 1]);
        assert_eq!(c.charges[1].key, l.charges(&s).charges[1].key);
        assert_eq!(&*c.charges[1].key, "leaky:bal:{acme}");
        assert_eq!(*c.charges[1].algo, Algorithm::Balance { credited: 10 });
    }
}
