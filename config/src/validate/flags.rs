//! `flags:` → the model's [`Flags`]: names, rollout percentages, override org names and
//! descriptions, each error at its own path. The checks themselves live in `model::flags`, so the
//! control plane's API refuses exactly what a config file may not say.

use super::Check;
use crate::model::flags::{
    check_flag_description, check_flag_name, check_org_name, check_rollout_percent, Flag, Flags,
};
use crate::spec::FlagSpec;
use std::collections::BTreeMap;

/// Every flag that validates; each problem is recorded.
pub(crate) fn flags(c: &mut Check<'_>, specs: &BTreeMap<String, FlagSpec>) -> Flags {
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let path = format!("flags.{name}");
        let before = c.error_count();
        if let Err(msg) = check_flag_name(name) {
            key_err(c, "flags", name, msg);
        }
        let percent = check_rollout_percent(spec.rollout_percent)
            .map_err(|msg| c.err(&format!("{path}.rollout_percent"), msg))
            .unwrap_or(100);
        for org in spec.orgs.keys() {
            if let Err(msg) = check_org_name(org) {
                key_err(c, &format!("{path}.orgs"), org, msg);
            }
        }
        if let Some(Err(msg)) = spec.description.as_deref().map(check_flag_description) {
            c.err(&format!("{path}.description"), msg);
        }
        if c.error_count() == before {
            out.push(Flag::new(
                name,
                spec.enabled,
                percent,
                &spec.orgs,
                spec.description.clone(),
            ));
        }
    }
    Flags::new(out)
}

/// An error about a mapping key itself (a flag's or an org's name), reported where the key is.
fn key_err(c: &mut Check<'_>, path: &str, key: &str, msg: String) {
    let error = c.sources.error_at_key(path, key, msg);
    c.errors.push(error);
}
