//! Reading config files: overlays (`extends`), parsing with positions, typed deserialization into the
//! `spec`, then `validate` into the `model`; every failure becomes `file:line:col: message`.

use crate::error::{ConfigError, ConfigErrors, Sources};
use crate::model::Config;
use crate::spec::ConfigFile;
use crate::validate;
use crate::yaml::{self, Pos};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

const MAX_EXTENDS_DEPTH: usize = 8;

/// Largest config file read, in bytes: a bound on what one load may allocate (real configs are a
/// few KiB; a generated key list of 100,000 keys is about 15 MiB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Why one file of a config could not be read or merged (before any field is looked at). Rendered as
/// the message of a [`ConfigError`] at that file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config: {0}")]
    Io(std::io::Error),
    #[error(
        "config file is larger than {} MiB ({} bytes)",
        MAX_CONFIG_BYTES / (1024 * 1024),
        MAX_CONFIG_BYTES
    )]
    TooLarge,
    #[error("cannot read config: it is not UTF-8 text")]
    NotUtf8,
    #[error("a config file must be a mapping (`server:`, `providers:`, `routes:`, ...)")]
    NotAMapping,
    #[error("`extends` must be a file path")]
    ExtendsNotAPath,
    #[error("`extends` names `{0}`, which is not a file next to this one")]
    ExtendsMissing(String),
    #[error("`extends` names `{0}`, which is already being loaded (an `extends` cycle)")]
    ExtendsCycle(String),
    #[error("`extends` chains more than {} base files", MAX_EXTENDS_DEPTH)]
    ExtendsTooDeep,
    #[error("`extends` is for files on disk; a document given as text must be complete")]
    ExtendsInText,
}

/// Reads at most `MAX_CONFIG_BYTES` (+1 to tell a larger file), whatever the file claims to be:
/// a FIFO or a file still growing is bounded the same way as a large regular file.
fn read_bounded(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(LoadError::Io)?;
    if file.metadata().is_ok_and(|m| m.len() > MAX_CONFIG_BYTES) {
        return Err(LoadError::TooLarge);
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(LoadError::Io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(LoadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)
}

/// Loads, merges, validates. Environment variables are read through `env`.
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut sources = Sources { files: Vec::new() };
    let merged = read_merged(path, &mut sources, 0).map_err(|e| ConfigErrors(vec![e]))?;
    let hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&merged).unwrap_or_default(),
    ));
    let file = deserialize(merged, &sources).map_err(|e| ConfigErrors(vec![e]))?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let files = sources.files.iter().map(|(f, _)| f.clone()).collect();
    validate::validate(file, &sources, env, files, base_dir, hash)
}

/// The merged tree as the `spec`; serde's first error, at its position.
fn deserialize(merged: Value, sources: &Sources) -> Result<ConfigFile, ConfigError> {
    serde_path_to_error::deserialize(merged).map_err(|e| {
        let p = serde_path(e.path());
        let msg = e.inner().to_string();
        match msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
        {
            // The path of an unknown field may end with the field itself; its key is in the parent.
            Some((key, _)) => {
                let parent = if p == key {
                    ""
                } else {
                    p.strip_suffix(key)
                        .and_then(|q| q.strip_suffix('.'))
                        .unwrap_or(&p)
                };
                sources.error_at_key(parent, key, msg.clone())
            }
            None => sources.error_at(&p, msg),
        }
    })
}

/// Loads with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|k| std::env::var(k).ok())
}

/// The merged tree of `path` and the files it `extends`, as written (no `${ENV}` expanded, nothing
/// validated): what a control plane imports as its base document.
pub fn load_merged(path: &Path) -> Result<Value, ConfigErrors> {
    let mut sources = Sources { files: Vec::new() };
    read_merged(path, &mut sources, 0).map_err(|e| ConfigErrors(vec![e]))
}

/// Loads a complete document given as text (a config pushed by a control plane, a document sent to
/// its API): validated exactly as a file, errors reported as `{label}:line:col`. `extends` is refused
/// (there are no files next to a text); relative paths in filters resolve against `base_dir`.
pub fn load_text(
    label: &Path,
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let at = |pos: Option<Pos>, e: &dyn std::fmt::Display| ConfigError {
        file: label.to_path_buf(),
        pos,
        message: e.to_string(),
    };
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigErrors(vec![at(None, &LoadError::TooLarge)]));
    }
    let (mut value, index) =
        yaml::parse(text).map_err(|e| ConfigErrors(vec![at(Some(e.pos), &e)]))?;
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    let Some(map) = value.as_object() else {
        let e = at(index.exact(""), &LoadError::NotAMapping);
        return Err(ConfigErrors(vec![e]));
    };
    if map.contains_key("extends") {
        let e = at(index.exact("extends"), &LoadError::ExtendsInText);
        return Err(ConfigErrors(vec![e]));
    }
    let sources = Sources {
        files: vec![(label.to_path_buf(), index)],
    };
    let hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&value).unwrap_or_default(),
    ));
    let file = deserialize(value, &sources).map_err(|e| ConfigErrors(vec![e]))?;
    let files = vec![label.to_path_buf()];
    validate::validate(file, &sources, env, files, base_dir.to_path_buf(), hash)
}

fn read_merged(path: &Path, sources: &mut Sources, depth: usize) -> Result<Value, ConfigError> {
    let at = |pos: Option<Pos>, e: &dyn std::fmt::Display| ConfigError {
        file: path.to_path_buf(),
        pos,
        message: e.to_string(),
    };
    let text = read_bounded(path).map_err(|e| at(None, &e))?;
    let (mut value, index) = yaml::parse(&text).map_err(|e| at(Some(e.pos), &e))?;
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    if !value.is_object() {
        // serde would read a sequence as the struct's fields in order; a config file is a mapping.
        return Err(at(index.exact(""), &LoadError::NotAMapping));
    }
    let extends = match value.as_object_mut().and_then(|m| m.remove("extends")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(at(index.exact("extends"), &LoadError::ExtendsNotAPath)),
    };
    let extends_pos = index.exact("extends");
    sources.files.push((path.to_path_buf(), index));
    let Some(base_name) = extends else {
        return Ok(value);
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&base_name);
    check_base(&base_path, base_name, sources, depth).map_err(|e| at(extends_pos, &e))?;
    let mut base = read_merged(&base_path, sources, depth + 1)?;
    merge(&mut base, value);
    Ok(base)
}

/// Whether the file an `extends` names may be read next: it exists, is not already in the chain, and
/// the chain is not too long.
fn check_base(
    base_path: &Path,
    base_name: String,
    sources: &Sources,
    depth: usize,
) -> Result<(), LoadError> {
    if !base_path.is_file() {
        return Err(LoadError::ExtendsMissing(base_name));
    }
    // Every file read so far is an ancestor of this one in the (linear) `extends` chain.
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let base_canonical = canonical(base_path);
    if sources
        .files
        .iter()
        .any(|(f, _)| canonical(f) == base_canonical)
    {
        return Err(LoadError::ExtendsCycle(base_name));
    }
    if depth >= MAX_EXTENDS_DEPTH {
        return Err(LoadError::ExtendsTooDeep);
    }
    Ok(())
}

/// Overlay merge: mappings merge key by key, anything else in the overlay replaces the base.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => break,
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{merge, read_bounded, LoadError, MAX_CONFIG_BYTES};
    use serde_json::json;

    #[test]
    fn read_errors_are_typed_and_render_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_bounded(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(matches!(missing, LoadError::Io(_)), "{missing:?}");
        assert!(missing.to_string().starts_with("cannot read config: "));

        let binary = dir.path().join("binary.yaml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let e = read_bounded(&binary).unwrap_err();
        assert!(matches!(e, LoadError::NotUtf8), "{e:?}");
        assert_eq!(e.to_string(), "cannot read config: it is not UTF-8 text");

        let large = dir.path().join("large.yaml");
        let file = std::fs::File::create(&large).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = read_bounded(&large).unwrap_err();
        assert!(matches!(e, LoadError::TooLarge), "{e:?}");
        assert_eq!(
            e.to_string(),
            "config file is larger than 16 MiB (16777216 bytes)"
        );
    }

    #[test]
    fn overlay_merges_maps_and_replaces_lists() {
        let mut base =
            json!({"server": {"listen": "a", "threads": 2}, "routes": [1, 2], "keep": true});
        merge(&mut base, json!({"server": {"listen": "b"}, "routes": [3]}));
        assert_eq!(
            base,
            json!({"server": {"listen": "b", "threads": 2}, "routes": [3], "keep": true})
        );
    }
}
