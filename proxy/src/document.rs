//! What a config source yields: a config document (the validated model), the source's version of it and
//! where it came from, or a typed reason it could not produce one. A leaf module: the reload state
//! (`reload`) applies documents and the sources (`source`, `watch`) produce them, without either
//! knowing the other's internals.

use leaky_config::{Config, ConfigError};
use std::path::{Path, PathBuf};

/// Where a document came from, as `/admin/config` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Read from `root` and the files it `extends`.
    Files { root: PathBuf },
    /// Pushed by `from` (a control plane, a test).
    Pushed { from: String },
}

impl Origin {
    /// The name problems with the whole document are reported against (`{label}: message`).
    pub fn label(&self) -> PathBuf {
        match self {
            Origin::Files { root } => root.clone(),
            Origin::Pushed { from } => PathBuf::from(format!("config pushed by {from}")),
        }
    }
}

/// One complete config, ready to apply.
#[derive(Debug, Clone)]
pub struct ConfigDocument {
    pub config: Config,
    /// The source's own version: the merged content's hash for files, the pushed version string.
    pub version: String,
    pub origin: Origin,
}

impl ConfigDocument {
    /// A document read from `root`, versioned by its content hash.
    pub fn from_files(root: &Path, config: Config) -> Self {
        ConfigDocument {
            version: config.hash.clone(),
            origin: Origin::Files {
                root: root.to_path_buf(),
            },
            config,
        }
    }
}

/// Why a source has no document to offer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The source's content is not a valid config: every problem, as `file:line:col: message`.
    #[error("{}", lines(.0))]
    Invalid(Vec<ConfigError>),
    /// The source cannot be read now (nothing pushed yet, the stream closed).
    #[error("{0}")]
    Unavailable(String),
}

/// Errors one per line, as the config crate prints them.
pub(crate) fn lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
