//! Reading config files: overlays (`extends`), parsing with positions, typed deserialization, and
//! turning every error into `file:line:col: message`.

use crate::yaml::{self, LocationIndex, Pos};
use crate::{validate, Config, ConfigFile};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The files behind one merged config, overlay first, with their location indexes.
pub(crate) struct Sources {
    files: Vec<(PathBuf, LocationIndex)>,
}

impl Sources {
    /// An error at `path` (serde_path_to_error spelling) in whichever file defines that node; a node
    /// defined nowhere (a missing field) is reported at its nearest defined ancestor.
    pub(crate) fn error_at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        for (file, idx) in &self.files {
            if let Some(pos) = idx.exact(path) {
                return ConfigError {
                    file: file.clone(),
                    pos: Some(pos),
                    message,
                };
            }
        }
        let mut best: Option<(usize, &PathBuf, Pos)> = None;
        for (file, idx) in &self.files {
            let mut p = path;
            while let Some(cut) = p.rfind(['.', '[']) {
                p = &p[..cut];
                if let Some(pos) = idx.exact(p) {
                    if best.is_none_or(|(len, ..)| p.len() > len) {
                        best = Some((p.len(), file, pos));
                    }
                    break;
                }
            }
        }
        match best {
            Some((_, file, pos)) => ConfigError {
                file: file.clone(),
                pos: Some(pos),
                message,
            },
            None => {
                let file = self
                    .files
                    .first()
                    .map(|(f, _)| f.clone())
                    .unwrap_or_default();
                ConfigError {
                    file,
                    pos: Some(Pos { line: 1, col: 1 }),
                    message,
                }
            }
        }
    }

    /// An error about the key `key` of the mapping at `path` (e.g. an unknown field).
    fn error_at_key(&self, path: &str, key: &str, message: String) -> ConfigError {
        for (file, idx) in &self.files {
            if let Some(pos) = idx.key(path, key) {
                return ConfigError {
                    file: file.clone(),
                    pos: Some(pos),
                    message,
                };
            }
        }
        self.error_at(path, message)
    }
}

const MAX_EXTENDS_DEPTH: usize = 8;

/// Largest config file read, in bytes: a bound on what one load may allocate (real configs are a
/// few KiB; a generated key list of 100,000 keys is about 15 MiB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Reads at most `MAX_CONFIG_BYTES` (+1 to tell a larger file), whatever the file claims to be:
/// a FIFO or a file still growing is bounded the same way as a large regular file.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let too_large = || {
        format!(
            "config file is larger than {} MiB ({MAX_CONFIG_BYTES} bytes)",
            MAX_CONFIG_BYTES / (1024 * 1024)
        )
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read config: {e}"))?;
    if file.metadata().is_ok_and(|m| m.len() > MAX_CONFIG_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read config: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| "cannot read config: it is not UTF-8 text".to_string())
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
    let file: ConfigFile = serde_path_to_error::deserialize(merged).map_err(|e| {
        let p = serde_path(e.path());
        let msg = e.inner().to_string();
        let err = match msg
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
        };
        ConfigErrors(vec![err])
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let files = sources.files.iter().map(|(f, _)| f.clone()).collect();
    validate::validate(file, &sources, env, files, base_dir, hash)
}

/// Loads with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|k| std::env::var(k).ok())
}

fn read_merged(path: &Path, sources: &mut Sources, depth: usize) -> Result<Value, ConfigError> {
    let at = |message: String| ConfigError {
        file: path.to_path_buf(),
        pos: None,
        message,
    };
    let text = read_bounded(path).map_err(at)?;
    let (mut value, index) = yaml::parse(&text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        pos: Some(e.pos),
        message: e.message,
    })?;
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    if !value.is_object() {
        // serde would read a sequence as the struct's fields in order; a config file is a mapping.
        return Err(ConfigError {
            file: path.to_path_buf(),
            pos: index.exact(""),
            message: "a config file must be a mapping (`server:`, `providers:`, `routes:`, ...)"
                .into(),
        });
    }
    let extends = match value.as_object_mut().and_then(|m| m.remove("extends")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            let pos = index.exact("extends");
            return Err(ConfigError {
                file: path.to_path_buf(),
                pos,
                message: "`extends` must be a file path".into(),
            });
        }
    };
    let extends_pos = index.exact("extends");
    sources.files.push((path.to_path_buf(), index));
    let Some(base_name) = extends else {
        return Ok(value);
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&base_name);
    let at_extends = |message: String| ConfigError {
        file: path.to_path_buf(),
        pos: extends_pos,
        message,
    };
    if !base_path.is_file() {
        return Err(at_extends(format!(
            "`extends` names `{base_name}`, which is not a file next to this one"
        )));
    }
    // Every file read so far is an ancestor of this one in the (linear) `extends` chain.
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let base_canonical = canonical(&base_path);
    if sources
        .files
        .iter()
        .any(|(f, _)| canonical(f) == base_canonical)
    {
        return Err(at_extends(format!(
            "`extends` names `{base_name}`, which is already being loaded (an `extends` cycle)"
        )));
    }
    if depth >= MAX_EXTENDS_DEPTH {
        return Err(at_extends(format!(
            "`extends` chains more than {MAX_EXTENDS_DEPTH} base files"
        )));
    }
    let mut base = read_merged(&base_path, sources, depth + 1)?;
    merge(&mut base, value);
    Ok(base)
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
    use super::merge;
    use serde_json::json;

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
