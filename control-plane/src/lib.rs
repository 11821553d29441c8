//! Leaky Tokens control plane (issue 13, first increment): tenancy — orgs, users, tiers and API keys —
//! in PostgreSQL, an audited admin REST API under `/v1`, and the `leaky-tokens control-plane` process.
//!
//! Modules are bounded contexts, each owning one Postgres schema ([`tenancy`], [`audit`],
//! [`registry`], [`flags`], [`outbox`] — domain events relayed to Kafka, [`ledger`] — the event-sourced token ledger, [`billing`] — token purchases as persisted sagas, [`identity`] — the OAuth2 authorization server (issue 14), [`config`] — the config server; [`eureka`] owns none: it speaks Eureka's API
//! through the registry's Rust API), plus the shared edges: [`consume`] (idempotent Kafka consumers), [`db`] (pool, migrations), [`http`] (problem+json, auth,
//! extractors), [`clock`] (an injectable "now"), [`metrics`] (Prometheus exposition) and [`app`] (roles, router, start-up). Contexts call
//! each other's functions, never each other's tables.
//! [`openapi`] assembles the OpenAPI 3.1 document from the handlers (with [`apidoc`]'s problem
//! responses and examples); [`docs`] serves Swagger UI.

pub mod apidoc;
pub mod app;
pub mod audit;
pub mod billing;
pub mod clock;
pub mod config;
pub mod consume;
pub mod db;
pub mod docs;
pub mod eureka;
pub mod flags;
pub mod http;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod outbox;
pub mod registry;
pub mod roles;
pub mod statements;
pub mod tenancy;
pub mod tls;
pub mod usage;

pub use app::{run, run_with_tls, Config, Role, Roles};
