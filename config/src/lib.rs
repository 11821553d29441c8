//! Leaky Tokens configuration.
//!
//! - `schema`: the YAML users write (serde, `deny_unknown_fields`, JSON Schema via schemars).
//! - `load`: files, `extends` overlays, positions, typed errors as `file:line:col: message`.
//! - `validate`: rules serde cannot express (references resolve, addresses parse, secrets interpolate).
//! - `model`: the validated result the data plane builds its snapshot from.
//! - `forwarding`: which headers cross the gateway, trusted proxies, provider account headers.
//! - `endpoints`: a route's endpoint allow-list (spec, model, per-dialect defaults, pattern match).

pub mod endpoints;
pub mod forwarding;
mod interpolate;
pub mod limits;
mod load;
pub mod model;
pub mod resilience;
pub mod schema;
mod validate;
mod validate_endpoints;
mod validate_limits;
mod validate_resilience;
pub mod yaml;

pub use forwarding::{Cidr, HeaderPattern, NEVER_FORWARDED};
pub use interpolate::interpolate;
pub use limits::*;
pub use load::{load, load_with_env, ConfigError, ConfigErrors, MAX_CONFIG_BYTES};
pub use model::*;
pub use schema::*;
pub use validate::JWT_ALGORITHMS;

/// The JSON Schema of the config file format, pretty-printed (what `config/schema.json` holds).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ConfigFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
