//! Pure parts of the config server: the structure of a version (YAML base, tiers, flags) and its key
//! set, merged into the document proxies load; content hashes; validation with the data plane's own
//! loader (`leaky_config::load_text`), so the API refuses exactly what `check-config` refuses.
//!
//! Provider credentials: a base names them as `${secret:<name>}` (the vault of
//! `identity::provider_credentials`) or `${VAR}` (the proxy's environment). The stored base and
//! document keep the reference; [`resolve`] substitutes the value only into the line streamed to a
//! proxy, so no clear credential is written to Postgres.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use leaky_config::KeySpec;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::identity::provider_credentials::valid_name as valid_secret_name;

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
    /// Provider credentials the base references (`${secret:<name>}`): name → revision.
    pub secrets: BTreeMap<String, i64>,
    /// Hex SHA-256 of the base, tiers and flags (and the secrets' revisions, when any), canonical.
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
        let mut s = Self {
            base,
            base_value,
            tiers,
            flags,
            secrets: BTreeMap::new(),
            hash: String::new(),
        };
        s.rehash();
        Ok(s)
    }

    /// The same structure with the referenced credentials' revisions, so a changed credential
    /// changes the hash (and publishes a snapshot) while the base stays as written.
    pub fn with_secrets(mut self, secrets: BTreeMap<String, i64>) -> Self {
        self.secrets = secrets;
        self.rehash();
        self
    }

    fn rehash(&mut self) {
        let (b, t, f) = (&self.base_value, &self.tiers, &self.flags);
        // Without references the hash is what it was before credentials existed (stored versions
        // keep matching the structure in force).
        let canonical = if self.secrets.is_empty() {
            serde_json::json!({ "base": b, "tiers": t, "flags": f })
        } else {
            serde_json::json!({ "base": b, "tiers": t, "flags": f, "secrets": self.secrets })
        };
        self.hash = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
    }

    /// The credential names the base references. `strict` (a base sent to the API) also refuses a
    /// literal credential; a reference outside a `credential` is refused either way. Messages name
    /// the place and the reference, never a value.
    pub fn credential_refs(&self, strict: bool) -> Result<BTreeSet<String>, Vec<String>> {
        let mut refs = BTreeSet::new();
        let mut errors = Vec::new();
        let mut at_credentials = 0usize;
        for (path, value) in credential_slots(&self.base_value) {
            let Some(text) = value.as_str() else { continue };
            at_credentials += text.matches(SECRET_REF).count();
            match classify(text) {
                Credential::Secret(name) => {
                    refs.insert(name.to_owned());
                }
                Credential::Env => {}
                Credential::BadSecret => errors.push(format!(
                    "base.yaml: {path}: a credential reference is `${{secret:<name>}}` alone, \
                     <name> of a-z 0-9 _ . - (at most 64)"
                )),
                Credential::Literal if strict => errors.push(format!(
                    "base.yaml: {path}: a literal credential is refused (it would be stored in clear): \
                     store it with PUT /v1/provider-credentials/{{name}} and reference it as `${{secret:<name>}}`"
                )),
                Credential::Literal => {}
            }
        }
        if count_refs(&self.base_value) > at_credentials {
            errors.push(format!(
                "base.yaml: `{SECRET_REF}...}}` is resolved only in a provider's or deployment's `credential`"
            ));
        }
        if errors.is_empty() {
            Ok(refs)
        } else {
            Err(errors)
        }
    }
}

/// The prefix of a vault reference.
pub const SECRET_REF: &str = "${secret:";

enum Credential<'a> {
    Secret(&'a str),
    Env,
    BadSecret,
    Literal,
}

/// What a credential's text is: exactly one reference (`${secret:<name>}`, `${VAR}` or
/// `${VAR:-default}`), or a literal.
fn classify(text: &str) -> Credential<'_> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix(SECRET_REF) {
        return match rest.strip_suffix('}') {
            Some(name) if valid_secret_name(name) => Credential::Secret(name),
            _ => Credential::BadSecret,
        };
    }
    let env = text
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .filter(|body| !body.contains('}') && !body.contains('$'))
        .map(|body| body.split_once(":-").map_or(body, |(n, _)| n))
        .is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if env {
        Credential::Env
    } else {
        Credential::Literal
    }
}

/// Every `credential` of the base: `providers.<p>.credential` and
/// `providers.<p>.deployments[i].credential`, with their paths.
fn credential_slots(base: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    let Some(providers) = base.get("providers").and_then(Value::as_object) else {
        return out;
    };
    for (name, p) in providers {
        if let Some(c) = p.get("credential") {
            out.push((format!("providers.{name}.credential"), c));
        }
        let deployments = p.get("deployments").and_then(Value::as_array);
        for (i, d) in deployments.into_iter().flatten().enumerate() {
            if let Some(c) = d.get("credential") {
                out.push((format!("providers.{name}.deployments[{i}].credential"), c));
            }
        }
    }
    out
}

fn count_refs(v: &Value) -> usize {
    match v {
        Value::String(s) => s.matches(SECRET_REF).count(),
        Value::Array(a) => a.iter().map(count_refs).sum(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| k.matches(SECRET_REF).count() + count_refs(v))
            .sum(),
        _ => 0,
    }
}

/// `document` with every `${secret:<name>}` credential replaced by its value from `values` (`$`
/// doubled, since the proxy's loader reads `$$` as `$`). References without a value stay as they
/// are: the proxy refuses such a version (NACK) and keeps serving the one before. What this returns
/// goes to proxies only; it is never stored or logged.
pub fn resolve(
    document: &str,
    values: &BTreeMap<String, crate::identity::Secret<String>>,
) -> String {
    if values.is_empty() || !document.contains(SECRET_REF) {
        return document.to_owned();
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(document) else {
        return document.to_owned();
    };
    let Some(providers) = doc.get_mut("providers").and_then(Value::as_object_mut) else {
        return document.to_owned();
    };
    let substitute = |slot: &mut Value| {
        let value = match slot.as_str().map(classify) {
            Some(Credential::Secret(name)) => values.get(name),
            _ => None,
        };
        if let Some(v) = value {
            *slot = Value::String(v.expose().replace('$', "$$"));
        }
    };
    for p in providers.values_mut() {
        if let Some(c) = p.get_mut("credential") {
            substitute(c);
        }
        if let Some(ds) = p.get_mut("deployments").and_then(Value::as_array_mut) {
            for c in ds.iter_mut().filter_map(|d| d.get_mut("credential")) {
                substitute(c);
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| document.to_owned())
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
    // A vault reference is resolved only for the proxies: validate it as the literal text it is
    // (`$$` is the loader's escape for `$`), so its value is never needed here.
    let text = text.replace(SECRET_REF, "$${secret:");
    leaky_config::load_text(Path::new(label), &text, Path::new("."), &|k| {
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

    fn structure(base: &str) -> Structure {
        Structure::new(base.into(), BTreeMap::new(), BTreeMap::new()).unwrap()
    }

    const CRED_BASE: &str = r#"providers:
  openai:
    base_url: http://127.0.0.1:9
    models: [gpt-4o]
    credential: CRED
    deployments:
      - { name: eu, base_url: http://127.0.0.1:10, credential: "${secret:eu.openai}" }
routes:
  - name: v1
    prefix: /v1
    upstream: { provider: openai, path_prefix: /v1 }
"#;

    #[test]
    fn credentials_are_references_and_literals_are_refused_only_when_sent() {
        let s = structure(&CRED_BASE.replace("CRED", "${secret:openai}"));
        let refs = s.credential_refs(true).unwrap();
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            ["eu.openai", "openai"]
        );
        for env in ["${OPENAI_API_KEY}", "${OPENAI_API_KEY:-sk-stub}"] {
            let s = structure(&CRED_BASE.replace("CRED", env));
            assert_eq!(s.credential_refs(true).unwrap().len(), 1, "{env}");
        }
        let literal = structure(&CRED_BASE.replace("CRED", "sk-live-1234"));
        let errors = literal.credential_refs(true).unwrap_err();
        assert!(
            errors[0].contains("providers.openai.credential"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("PUT /v1/provider-credentials/{name}"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("sk-live-1234"), "{errors:?}");
        assert!(
            literal.credential_refs(false).is_ok(),
            "a stored base is not re-judged"
        );
        for bad in ["${secret:Open AI}", "sk-${secret:openai}", "${OPENAI}${X}"] {
            let s = structure(&CRED_BASE.replace("CRED", &format!("\"{bad}\"")));
            assert!(s.credential_refs(true).is_err(), "{bad}");
        }
        let elsewhere = structure(&format!(
            "{}x_note: \"${{secret:openai}}\"\n",
            CRED_BASE.replace("CRED", "${X}")
        ));
        assert!(elsewhere.credential_refs(false).is_err());
    }

    #[test]
    fn secrets_change_the_hash_and_resolve_only_in_the_streamed_document() {
        let s = structure(&CRED_BASE.replace("CRED", "${secret:openai}"));
        let plain = s.hash.clone();
        let one = s.clone().with_secrets(BTreeMap::from([
            ("openai".into(), 1),
            ("eu.openai".into(), 2),
        ]));
        let two = s.clone().with_secrets(BTreeMap::from([
            ("openai".into(), 3),
            ("eu.openai".into(), 2),
        ]));
        assert_ne!(plain, one.hash);
        assert_ne!(one.hash, two.hash);
        let doc = render(&one, &KeySet::default());
        validate("config v1", &doc).unwrap();
        assert!(doc.contains("${secret:openai}"));
        let values = BTreeMap::from([
            (
                "openai".to_owned(),
                crate::identity::Secret::new("sk-a$b".to_owned()),
            ),
            (
                "eu.openai".to_owned(),
                crate::identity::Secret::new("sk-eu".to_owned()),
            ),
        ]);
        let resolved = resolve(&doc, &values);
        assert!(!resolved.contains("${secret:"), "{resolved}");
        let config =
            leaky_config::load_text(Path::new("pushed"), &resolved, Path::new("."), &|_| None)
                .unwrap();
        let p = &config.providers["openai"];
        assert_eq!(p.credential.as_ref().unwrap().expose(), "sk-a$b");
        let eu = p.deployments.iter().find(|d| d.name == "eu").unwrap();
        assert_eq!(eu.credential.as_ref().unwrap().expose(), "sk-eu");
        assert_eq!(
            resolve(&doc, &BTreeMap::new()),
            *doc,
            "no values: unchanged"
        );
    }

    #[test]
    fn a_base_that_is_not_yaml_is_refused_with_its_position() {
        let errors =
            Structure::new("routes: [".into(), BTreeMap::new(), BTreeMap::new()).unwrap_err();
        assert!(errors[0].starts_with("base.yaml:"), "{errors:?}");
    }
}
