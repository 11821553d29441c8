//! Leaky Tokens filters.
//!
//! A filter is a small struct built once per config version from its typed settings, with one method per
//! request phase it cares about: `on_request` (headers), `on_request_body` (model known),
//! `on_cost_floor` and `on_admit` (admission; a filter that takes something for the request returns
//! it as a [`Hold`], which the proxy's request ledger settles once). Where these phases sit in a
//! request's path: the phase chart in `proxy/src/lib.rs`.
//!
//! Filters never see Pingora types: they read `RequestInfo` (method, path, headers) and write the
//! per-request `RequestCtx` (principal, headers to add upstream or downstream). A rejection is a typed
//! `Rejection`, rendered once, at the edge, in the route's dialect (`reject.rs`).
//!
//! Modules, leaves first (no import cycle: `scripts/shape filters/src`): `hold`, `principal`, `reject`;
//! `key_index`; `chain` (the trait, the per-request context, a route's chain); the filters, on those
//! (`jwt` also on `api_key`'s model check); `registry` (YAML kind → filter, `BuildContext`), the one
//! module that names every filter. No filter imports the registry.

mod api_key;
mod chain;
mod concurrency;
mod hold;
mod jwt;
mod key_index;
mod principal;
pub mod rate_limit;
mod registry;
mod reject;
mod request_id;

pub use api_key::ApiKeyFilter;
pub use chain::{Chain, Filter, RequestCtx, RequestInfo};
pub use concurrency::ConcurrencyFilter;
pub use hold::{Admission, Hold, Settlement};
pub use jwt::{JwksCache, JwksError, JwtBuildError, JwtDeps, JwtFilter, RevokedTokens};
pub use key_index::{DeltaError, KeyIndex, SharedKeyIndex};
pub use principal::{AuthMethod, Principal};
pub use registry::{build_chain, BuildContext, BuildError};
pub use reject::{RejectKind, Rejection};
pub use request_id::RequestIdFilter;
