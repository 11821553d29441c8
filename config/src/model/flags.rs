//! Feature flags, evaluable: the one place that decides whether a flag is on for an org, used by the
//! proxies (per request) and by the control plane (`GET /v1/flags/{name}/evaluate`), so both always
//! give the same answer.
//!
//! **Evaluation** of a flag for an org: the org's override if it has one; else `enabled` and
//! `bucket(flag, org) < rollout_percent`. A request without an org has no override and no bucket: the
//! flag is on for it only when enabled at 100 %.
//!
//! **The bucket** (stable across processes, versions and platforms, documented so other
//! implementations can reproduce it): `h(s)` is 64-bit FNV-1a over the UTF-8 bytes of `s`; `mix` is
//! the SplitMix64 finalizer; `bucket(flag, org) = mix(h(flag) XOR h(org)) mod 100`. Mixing in the
//! flag's name gives each flag its own order of orgs, so the first 10 % of one rollout are not the
//! first 10 % of every other. A bucket below `p` is below any `p' > p`: raising a rollout only adds
//! orgs.
//!
//! **Cost per request**: everything that depends only on the flag (the name's hash, the overrides
//! sorted by their org's hash) is computed when the config version is built. Evaluating then hashes
//! the org name once (only when an override or a partial rollout needs it), binary-searches the
//! overrides by that hash, and mixes it: no allocation, no lock.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest flag name.
pub const MAX_FLAG_NAME_LEN: usize = 64;
/// Longest org name (as the control plane's tenancy stores them).
pub const MAX_ORG_NAME_CHARS: usize = 100;
/// Longest flag description.
pub const MAX_FLAG_DESCRIPTION_CHARS: usize = 500;

/// A flag the gateway's own code reads, with the value it has when no config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownFlag {
    pub name: &'static str,
    /// Its value when the config does not define it (today's behaviour, for a gate on an existing
    /// feature).
    pub default: bool,
    pub description: &'static str,
}

/// Gates the OpenAI `include_usage` rewrite of streamed requests whose caller did not ask for usage
/// (on by default). Off for an org: its body is forwarded untouched and a stream's usage is counted
/// from the streamed text (`usage_source: counted`).
pub const STREAM_USAGE_INJECTION: KnownFlag = KnownFlag {
    name: "stream_usage_injection",
    default: true,
    description:
        "Add `stream_options.include_usage` to OpenAI-shaped streams whose caller did not \
                  ask for usage, so the provider's reported usage settles them",
};

/// Every flag the gateway's code reads.
pub const KNOWN_FLAGS: &[KnownFlag] = &[STREAM_USAGE_INJECTION];

/// Why a flag has the value it has for an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The org's override.
    Override,
    /// `enabled: false` (and no override).
    Disabled,
    /// Enabled, and the org's bucket is below `rollout_percent` (always so at 100 %).
    InRollout,
    /// Enabled, but the org's bucket is at or above `rollout_percent`.
    OutOfRollout,
    /// Enabled below 100 % and the request has no org to bucket.
    NoOrg,
    /// No config names the flag: the gateway's built-in default.
    Default,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Disabled => "disabled",
            Reason::InRollout => "in-rollout",
            Reason::OutOfRollout => "out-of-rollout",
            Reason::NoOrg => "no-org",
            Reason::Default => "default",
        }
    }
}

/// A flag's value for one org and why; `bucket` when the org's bucket was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub on: bool,
    pub reason: Reason,
    pub bucket: Option<u8>,
}

/// One validated flag, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
    /// 0..=100.
    pub rollout_percent: u8,
    pub description: Option<String>,
    /// `h(name)`, the flag's part of every bucket.
    seed: u64,
    /// `(h(org), org, value)` sorted by hash, then name: one binary search per lookup.
    overrides: Vec<(u64, Box<str>, bool)>,
    /// No config named it: evaluations report [`Reason::Default`].
    builtin: bool,
}

impl Flag {
    /// A flag from already validated parts (see [`check_flag_name`], [`check_rollout_percent`],
    /// [`check_org_name`]); a percentage above 100 counts as 100.
    pub fn new(
        name: &str,
        enabled: bool,
        rollout_percent: u8,
        orgs: &BTreeMap<String, bool>,
        description: Option<String>,
    ) -> Flag {
        let mut overrides: Vec<(u64, Box<str>, bool)> = orgs
            .iter()
            .map(|(org, on)| (fnv1a(org.as_bytes()), org.as_str().into(), *on))
            .collect();
        overrides.sort();
        Flag {
            name: name.to_owned(),
            enabled,
            rollout_percent: rollout_percent.min(100),
            description,
            seed: fnv1a(name.as_bytes()),
            overrides,
            builtin: false,
        }
    }

    /// The flag as its built-in default: on or off for everyone.
    pub fn builtin(known: &KnownFlag) -> Flag {
        let mut flag = Flag::new(known.name, known.default, 100, &BTreeMap::new(), None);
        flag.description = Some(known.description.to_owned());
        flag.builtin = true;
        flag
    }

    /// Whether the config left this flag at its built-in default.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The per-org overrides, by org name.
    pub fn overrides(&self) -> BTreeMap<&str, bool> {
        self.overrides
            .iter()
            .map(|(_, org, on)| (&**org, *on))
            .collect()
    }

    /// Whether the flag is on for `org` (the hot path: see the module docs for its cost).
    #[inline]
    pub fn is_on(&self, org: Option<&str>) -> bool {
        self.evaluate(org).on
    }

    /// The flag's value for `org`, and why.
    pub fn evaluate(&self, org: Option<&str>) -> Evaluation {
        let partial = self.enabled && self.rollout_percent < 100 && self.rollout_percent > 0;
        let org_hash = match org {
            Some(o) if partial || !self.overrides.is_empty() => Some(fnv1a(o.as_bytes())),
            _ => None,
        };
        if let (Some(o), Some(h)) = (org, org_hash) {
            if let Some(on) = self.lookup(h, o) {
                return self.answer(on, Reason::Override, None);
            }
        }
        if !self.enabled {
            return self.answer(false, Reason::Disabled, None);
        }
        if self.rollout_percent >= 100 {
            return self.answer(true, Reason::InRollout, None);
        }
        let (Some(_), Some(h)) = (org, org_hash) else {
            let reason = if org.is_some() {
                Reason::OutOfRollout // 0 %: nobody is in
            } else {
                Reason::NoOrg
            };
            return self.answer(false, reason, None);
        };
        let bucket = bucket_of(self.seed, h);
        let on = bucket < self.rollout_percent;
        let reason = if on {
            Reason::InRollout
        } else {
            Reason::OutOfRollout
        };
        self.answer(on, reason, Some(bucket))
    }

    fn answer(&self, on: bool, reason: Reason, bucket: Option<u8>) -> Evaluation {
        let reason = if self.builtin {
            Reason::Default
        } else {
            reason
        };
        Evaluation { on, reason, bucket }
    }

    /// The override of the org named `org`, whose hash is `h`.
    fn lookup(&self, h: u64, org: &str) -> Option<bool> {
        let start = self.overrides.partition_point(|(oh, ..)| *oh < h);
        self.overrides[start..]
            .iter()
            .take_while(|(oh, ..)| *oh == h)
            .find(|(_, name, _)| &**name == org)
            .map(|(.., on)| *on)
    }
}

/// Every flag of one config version, by name. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    by_name: Arc<BTreeMap<String, Arc<Flag>>>,
}

impl Flags {
    pub fn new(flags: impl IntoIterator<Item = Flag>) -> Flags {
        let by_name = flags
            .into_iter()
            .map(|f| (f.name.clone(), Arc::new(f)))
            .collect();
        Flags {
            by_name: Arc::new(by_name),
        }
    }

    /// The configured flag named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Flag>> {
        self.by_name.get(name)
    }

    /// The flag the gateway's code reads as `known`: the configured one, else its built-in default.
    /// Resolve it once per config version, then call [`Flag::is_on`] per request.
    pub fn resolve(&self, known: &KnownFlag) -> Arc<Flag> {
        self.get(known.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Flag::builtin(known)))
    }

    /// The configured flags, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Flag>> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The org's bucket (0..=99) for flag `flag`: `mix(h(flag) XOR h(org)) mod 100` (module docs).
pub fn bucket(flag: &str, org: &str) -> u8 {
    bucket_of(fnv1a(flag.as_bytes()), fnv1a(org.as_bytes()))
}

fn bucket_of(seed: u64, org_hash: u64) -> u8 {
    // < 100 always fits; the modulo bias over 2^64 is below 1e-17.
    (splitmix64(seed ^ org_hash) % 100) as u8
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finalizer: spreads FNV's weak low bits over the whole word before the modulo.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A flag name: 1..=64 of `a-z 0-9 _ -`.
pub fn check_flag_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FLAG_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "flag name `{name}` must be 1 to {MAX_FLAG_NAME_LEN} of a-z, 0-9, _, -"
        ))
    }
}

/// A rollout percentage: 0..=100.
pub fn check_rollout_percent(percent: u64) -> Result<u8, String> {
    u8::try_from(percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("`rollout_percent` must be between 0 and 100, not {percent}"))
}

/// An org name in an override: what the control plane's tenancy accepts — 1..=100 characters, no
/// control characters, no leading or trailing spaces.
pub fn check_org_name(org: &str) -> Result<(), String> {
    let len = org.chars().count();
    if len == 0
        || len > MAX_ORG_NAME_CHARS
        || org.trim() != org
        || org.chars().any(char::is_control)
    {
        return Err(format!(
            "org name `{}` must be 1 to {MAX_ORG_NAME_CHARS} characters, without control \
             characters or leading/trailing spaces",
            org.escape_debug()
        ));
    }
    Ok(())
}

/// A description: at most 500 characters.
pub fn check_flag_description(description: &str) -> Result<(), String> {
    if description.chars().count() > MAX_FLAG_DESCRIPTION_CHARS {
        return Err(format!(
            "`description` must be at most {MAX_FLAG_DESCRIPTION_CHARS} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn flag(enabled: bool, percent: u8, orgs: &[(&str, bool)]) -> Flag {
        let orgs = orgs.iter().map(|(o, v)| ((*o).to_owned(), *v)).collect();
        Flag::new("stream_usage_injection", enabled, percent, &orgs, None)
    }

    #[test]
    fn the_bucket_is_the_documented_function_and_never_changes() {
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // Pinned buckets, reproduced by an independent implementation of the documented formula:
        // every proxy and the control plane must agree, across releases too, or a rollout would
        // reshuffle its orgs.
        assert_eq!(bucket("stream_usage_injection", "acme"), 58);
        assert_eq!(bucket("stream_usage_injection", "globex"), 84);
        assert_eq!(bucket("new-checkout", "acme"), 3);
    }

    #[test]
    fn overrides_win_over_switch_and_rollout() {
        let f = flag(true, 100, &[("acme", false)]);
        assert!(!f.is_on(Some("acme")));
        assert!(f.is_on(Some("globex")));
        assert_eq!(f.evaluate(Some("acme")).reason, Reason::Override);
        let f = flag(false, 0, &[("acme", true)]);
        assert!(f.is_on(Some("acme")));
        assert!(!f.is_on(Some("globex")));
        assert_eq!(f.evaluate(Some("globex")).reason, Reason::Disabled);
    }

    #[test]
    fn without_an_org_only_a_full_rollout_is_on() {
        assert!(flag(true, 100, &[]).is_on(None));
        assert!(!flag(true, 99, &[]).is_on(None));
        assert_eq!(flag(true, 50, &[]).evaluate(None).reason, Reason::NoOrg);
        assert!(!flag(false, 100, &[]).is_on(None));
    }

    #[test]
    fn the_rollout_reaches_about_its_share_of_10k_orgs_and_only_grows() {
        let orgs: Vec<String> = (0..10_000).map(|i| format!("org-{i}")).collect();
        let mut previous: Vec<bool> = vec![false; orgs.len()];
        for percent in [0u8, 1, 10, 30, 50, 90, 100] {
            let f = flag(true, percent, &[]);
            let on: Vec<bool> = orgs.iter().map(|o| f.is_on(Some(o))).collect();
            let count = on.iter().filter(|x| **x).count();
            let expected = usize::from(percent) * 100;
            // 10k Bernoulli draws: the standard deviation is at most 50; allow 4 of them.
            assert!(
                count.abs_diff(expected) <= 200,
                "{percent}%: {count} of 10000 orgs on"
            );
            for (was, is) in previous.iter().zip(&on) {
                assert!(
                    !was || *is,
                    "raising the rollout to {percent}% dropped an org"
                );
            }
            previous = on;
        }
    }

    #[test]
    fn evaluation_is_stable_and_flags_bucket_orgs_independently() {
        let a = Flag::new("flag-a", true, 50, &BTreeMap::new(), None);
        let b = Flag::new("flag-b", true, 50, &BTreeMap::new(), None);
        let orgs: Vec<String> = (0..1_000).map(|i| format!("org-{i}")).collect();
        let first: Vec<bool> = orgs.iter().map(|o| a.is_on(Some(o))).collect();
        let again: Vec<bool> = orgs.iter().map(|o| a.clone().is_on(Some(o))).collect();
        assert_eq!(first, again);
        let same = orgs
            .iter()
            .filter(|o| a.is_on(Some(o)) == b.is_on(Some(o)))
            .count();
        assert!(
            (400..=600).contains(&same),
            "two 50% flags agree on {same} of 1000 orgs: not independent"
        );
        let e = a.evaluate(Some("org-1"));
        assert_eq!(e.bucket, Some(bucket("flag-a", "org-1")));
    }

    #[test]
    fn many_overrides_are_found_by_name() {
        let orgs: Vec<(String, bool)> =
            (0..500).map(|i| (format!("org-{i}"), i % 2 == 0)).collect();
        let map = orgs.iter().cloned().collect();
        let f = Flag::new("x", false, 0, &map, None);
        for (o, v) in &orgs {
            assert_eq!(f.is_on(Some(o)), *v, "{o}");
        }
        assert!(!f.is_on(Some("org-500")));
        assert_eq!(f.overrides().len(), 500);
    }

    #[test]
    fn unconfigured_known_flags_take_their_default() {
        let flags = Flags::default();
        let f = flags.resolve(&STREAM_USAGE_INJECTION);
        assert!(f.is_on(Some("acme")) && f.is_on(None));
        assert_eq!(f.evaluate(Some("acme")).reason, Reason::Default);
        let flags = Flags::new([flag(false, 100, &[])]);
        assert!(!flags.resolve(&STREAM_USAGE_INJECTION).is_on(Some("acme")));
    }

    #[test]
    fn names_percentages_and_orgs_are_checked() {
        assert!(check_flag_name("stream_usage_injection").is_ok());
        assert!(check_flag_name("a-1").is_ok());
        for bad in ["", "Upper", "with space", "dot.ted", &"x".repeat(65)] {
            assert!(check_flag_name(bad).is_err(), "{bad}");
        }
        assert_eq!(check_rollout_percent(100), Ok(100));
        assert_eq!(check_rollout_percent(0), Ok(0));
        assert!(check_rollout_percent(101).is_err());
        assert!(check_rollout_percent(300).is_err());
        assert!(check_org_name("Acme Corp").is_ok());
        for bad in ["", " acme", "acme ", "a\nb", &"x".repeat(101)] {
            assert!(check_org_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_flag_description(&"x".repeat(500)).is_ok());
        assert!(check_flag_description(&"x".repeat(501)).is_err());
    }
}
