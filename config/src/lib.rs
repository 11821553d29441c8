//! Leaky Tokens configuration, by layer. Each layer imports only the ones below it
//! (`scripts/shape` checks there is no cycle):
//!
//! - `spec`: the YAML users write (serde, `deny_unknown_fields`, JSON Schema via schemars).
//! - `model`: the validated types the data plane builds its snapshot from (filters included).
//! - `validate`: spec → model, every rule serde cannot express; the only layer that knows both.
//! - `load`: files, `extends` overlays, positions → spec → validate → model.
//! - leaves: `common` (enums both spec and model use), `error` (`file:line:col` errors and where a
//!   config path is), `yaml` (YAML with positions), `interpolate` (`${ENV}`).

mod common;
mod error;
mod interpolate;
mod load;
pub mod model;
pub mod spec;
mod validate;
pub mod yaml;

pub use error::{ConfigError, ConfigErrors};
pub use interpolate::{interpolate, InterpolateError};
pub use load::{load, load_merged, load_text, load_with_env, LoadError, MAX_CONFIG_BYTES};
pub use model::*;
/// The model's modules under the paths consumers already use (`leaky_config::resilience::Retry`,
/// `leaky_config::endpoints::PathPattern`).
pub use model::{endpoints, resilience};
pub use spec::*;

/// The JSON Schema of the config file format, pretty-printed (what `config/schema.json` holds).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
