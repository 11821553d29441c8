//! What a failed load reports: each problem as `file:line:col: message` ([`ConfigError`]), all of a load's
//! problems together ([`ConfigErrors`]), and how a problem at a config path (`routes[0].prefix`) finds
//! its file and position ([`Sources`]). Shared by `load` and `validate`, so neither imports the other's
//! internals.

use crate::yaml::{LocationIndex, Pos};
use std::fmt;
use std::path::PathBuf;

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

impl std::error::Error for ConfigError {}

impl std::error::Error for ConfigErrors {}

/// The files behind one merged config, overlay first, with their location indexes.
pub(crate) struct Sources {
    pub(crate) files: Vec<(PathBuf, LocationIndex)>,
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
    pub(crate) fn error_at_key(&self, path: &str, key: &str, message: String) -> ConfigError {
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
