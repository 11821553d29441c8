//! Leaky Tokens filters.
//!
//! A filter is a small struct built once per config version from its typed settings, with one method per
//! request phase it cares about. The proxy runs a route's chain in YAML order:
//!
//! ```text
//! on_request (headers; async)   ─ may reject ─▶ body read, model resolved
//! on_request_body (model known) ─ may reject ─▶ upstream call
//! on_response (status, headers) ─▶ on_response_chunk (each body chunk) ─▶ on_complete (always)
//! ```
//!
//! Filters never see Pingora types: they read `RequestInfo` (method, path, headers) and write the
//! per-request `RequestCtx` (principal, headers to add upstream or downstream). A rejection is a typed
//! `Rejection`, rendered once, at the edge, in the route's dialect (`reject.rs`).

mod api_key;
mod chain;
mod hold;
mod jwt;
mod key_index;
pub mod limit;
mod principal;
mod reject;
mod request_id;
pub mod resilience;
pub mod usage;

pub use api_key::ApiKeyFilter;
pub use chain::{build_chain, BuildContext, Chain, Filter, RequestCtx, RequestInfo};
pub use hold::{Admission, Hold, Settlement};
pub use jwt::JwtFilter;
pub use key_index::KeyIndex;
pub use principal::{AuthMethod, Principal};
pub use reject::{RejectKind, Rejection};
pub use request_id::RequestIdFilter;
