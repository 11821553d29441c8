//! Pure parts of the config server: the structure of a version (YAML base, tiers, flags) and its key
//! set, merged into the document proxies load; content hashes; validation with the data plane's own
//! loader (`leaky_config::load_text`), so the API refuses exactly what `check-config` refuses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use leaky_config::KeySpec;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Everything of a version but its keys: the YAML base as written, and the tiers and flags owned by
/// other contexts, merged over the base's own (an entry of the same name replaces the base's).
#[derive(Debug, Clone)]
pub struct Structure {
    /// The base as sent to `PUT /v1/config/base` (comments kept).
    pub base: String,
    /// The base parsed.
    base_value: Value,
    /// Tier name → config `TierSpec` (JSON).
    pub tiers: BTreeMap<String, Value>,
    /// Flag name → config flag spec (JSON).
    pub flags: BTreeMap<String, Value>,
    /// Hex SHA-256 of the three, canonical.
    pub hash: String,
}

impl Structure {
    /// Parses `base`; a syntax error is reported as `base.yaml:line:col: message`.
    pub fn new(
        base: String,
        tiers: BTreeMap<String, Value>,
        flags: BTreeMap<String, Value>,
    ) -> Result<Self, Vec<String>> {
        let (mut base_value, _) = leaky_config::yaml::parse(&base)
            .map_err(|e| vec![format!("base.yaml:{}:{}: {e}", e.pos.line, e.pos.col)])?;
        if base_value.is_null() {
            base_value = Value::Object(Map::new());
        }
        if !base_value.is_object() {
            return Err(vec![
                "base.yaml: the base must be a mapping (`providers:`, `routes:`, ...)".to_owned(),
            ]);
        }
        let canonical = serde_json::json!({ "base": base_value, "tiers": tiers, "flags": flags });
        let hash = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        Ok(Self {
            base,
            base_value,
            tiers,
            flags,
            hash,
        })
    }
}

/// A key set by id, with the order-free digest of its entries.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: BTreeMap<String, KeySpec>,
}

impl KeySet {
    pub fn from_specs(specs: impl IntoIterator<Item = KeySpec>) -> Self {
        Self {
            keys: specs.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    /// Applies a delta: `upsert` replaces entries by id, `remove` drops ids (unknown ids are ignored).
    pub fn apply(&mut self, delta: &Delta) {
        for id in &delta.remove {
            self.keys.remove(id);
        }
        for k in &delta.upsert {
            self.keys.insert(k.id.clone(), k.clone());
        }
    }

    /// XOR of the SHA-256 of every entry's canonical JSON: the same for the same set, whatever the
    /// order it was built in, on every replica.
    pub fn digest(&self) -> [u8; 32] {
        let mut acc = [0u8; 32];
        for k in self.keys.values() {
            let bytes = serde_json::to_vec(k).unwrap_or_default();
            for (a, b) in acc.iter_mut().zip(Sha256::digest(&bytes)) {
                *a ^= b;
            }
        }
        acc
    }
}

/// Key changes one version brings.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Delta {
    pub upsert: Vec<KeySpec>,
    pub remove: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The content hash of a version: its structure and its key set.
pub fn content_hash(structure: &Structure, digest: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(structure.hash.as_bytes());
    h.update(digest);
    hex::encode(h.finalize())
}

/// The merged document proxies load: the base with the tiers and flags merged over its own, and the
/// base's keys followed by the key set (by id). JSON, pretty-printed: it is YAML too (the proxies'
/// loader reads it), and one entry per line keeps `line:col` errors readable.
pub fn render(structure: &Structure, keys: &KeySet) -> Arc<str> {
    let mut doc = structure.base_value.clone();
    if let Some(map) = doc.as_object_mut() {
        merge_named(map, "tiers", &structure.tiers);
        merge_named(map, "flags", &structure.flags);
        let mut all = match map.remove("keys") {
            Some(Value::Array(base_keys)) => base_keys,
            _ => Vec::new(),
        };
        all.extend(
            keys.keys
                .values()
                .filter_map(|k| serde_json::to_value(k).ok()),
        );
        if !all.is_empty() {
            map.insert("keys".to_owned(), Value::Array(all));
        }
    }
    serde_json::to_string_pretty(&doc)
        .unwrap_or_default()
        .into()
}

fn merge_named(map: &mut Map<String, Value>, section: &str, entries: &BTreeMap<String, Value>) {
    if entries.is_empty() {
        return;
    }
    let target = map
        .entry(section.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (name, spec) in entries {
            t.insert(name.clone(), spec.clone());
        }
    }
}

/// Validates `text` as the data plane will load it, with this process's environment for `${VAR}`
/// references. Errors read `{label}:line:col: message`, as `check-config` prints them.
pub fn validate(label: &str, text: &str) -> Result<(), Vec<String>> {
    leaky_config::load_text(Path::new(label), text, Path::new("."), &|k| {
        std::env::var(k).ok()
    })
    .map(|_| ())
    .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "# comments are kept in the base\nproviders:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: { provider: openai, path_prefix: /v1 }\n    filters: [{ kind: api-key }]\n\
tiers:\n  pro: { priority: normal }\n";

    fn key(id: &str, tier: &str) -> KeySpec {
        KeySpec {
            id: id.into(),
            sha256: hex::encode(Sha256::digest(id.as_bytes())),
            user: id.into(),
            org: Some("org-1".into()),
            tier: tier.into(),
            roles: vec![],
            models: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn the_rendered_document_is_what_the_data_plane_loads() {
        let tiers = BTreeMap::from([("gold".to_owned(), serde_json::json!({"priority": "high"}))]);
        let s = Structure::new(BASE.into(), tiers, BTreeMap::new()).unwrap();
        let keys = KeySet::from_specs([key("a", "gold"), key("b", "pro")]);
        let doc = render(&s, &keys);
        validate("config v1", &doc).unwrap();
        let config =
            leaky_config::load_text(Path::new("v1"), &doc, Path::new("."), &|_| None).unwrap();
        assert_eq!(config.keys.len(), 2);
        assert_eq!(config.tiers.len(), 2, "the base's tier and the merged one");

        let unknown = KeySet::from_specs([key("c", "platinum")]);
        let errors = validate("config v2", &render(&s, &unknown)).unwrap_err();
        assert!(errors[0].starts_with("config v2:"), "{errors:?}");
        assert!(errors[0].contains("platinum"), "{errors:?}");
    }

    #[test]
    fn the_key_digest_ignores_order_and_follows_deltas() {
        let one = KeySet::from_specs([key("a", "pro"), key("b", "pro")]);
        let mut two = KeySet::from_specs([key("b", "pro")]);
        assert_ne!(one.digest(), two.digest());
        two.apply(&Delta {
            upsert: vec![key("a", "pro")],
            remove: vec!["zz".into()],
        });
        assert_eq!(one.digest(), two.digest());
        two.apply(&Delta {
            upsert: vec![],
            remove: vec!["a".into(), "b".into()],
        });
        assert_eq!(two.digest(), [0u8; 32]);
    }

    #[test]
    fn a_base_that_is_not_yaml_is_refused_with_its_position() {
        let errors =
            Structure::new("routes: [".into(), BTreeMap::new(), BTreeMap::new()).unwrap_err();
        assert!(errors[0].starts_with("base.yaml:"), "{errors:?}");
    }
}
