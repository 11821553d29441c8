//! `flags:` as written: named feature flags with an on/off switch, a percentage rollout and per-org
//! overrides. `validate::flags` checks names and ranges and builds the model's evaluable
//! [`Flags`](crate::model::Flags). The control plane serializes its flags in this same type into the
//! snapshot it pushes, so a flag edited through the API and one written in YAML read alike.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One feature flag. For an org: its entry in `orgs` decides if there is one; otherwise the flag is on
/// when `enabled` and the org's stable bucket (0–99, the same on every proxy and in the control
/// plane) is below `rollout_percent`. A request without an org sees the flag on only when it is
/// enabled at 100 %.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagSpec {
    /// The flag's main switch.
    pub enabled: bool,
    /// Share of orgs (0–100) the flag is on for while `enabled` (default 100: all of them).
    #[serde(default = "all_orgs")]
    #[schemars(range(max = 100))]
    pub rollout_percent: u64,
    /// Per-org overrides by org name (as in `keys[].org`): `true` or `false` whatever `enabled` and
    /// the rollout say.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orgs: BTreeMap<String, bool>,
    /// What the flag gates, for people (at most 500 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn all_orgs() -> u64 {
    100
}
