//! Example objects for the OpenAPI document: one org, user, tier, key, audit event and registry instance,
//! consistent with each other (the key belongs to the org and uses the tier), as the API would return them.

use serde_json::{json, Value};

pub const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
pub const USER: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
pub const KEY: &str = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a";
pub const NEW_KEY: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
const AT: &str = "2026-01-15T09:30:00Z";

pub fn org() -> Value {
    json!({"id": ORG, "name": "acme", "time_zone": "UTC", "created_at": AT, "updated_at": AT, "version": 1})
}

pub fn org_renamed() -> Value {
    json!({"id": ORG, "name": "acme-renamed", "time_zone": "Europe/Berlin", "created_at": AT, "updated_at": "2026-01-16T10:00:00Z", "version": 2})
}

pub fn new_user() -> Value {
    json!({"email": "ada@acme.test", "name": "Ada", "roles": ["admin"]})
}

pub fn user() -> Value {
    json!({"id": USER, "org": ORG, "email": "ada@acme.test", "name": "Ada", "roles": ["admin"],
           "created_at": AT, "updated_at": AT, "version": 1})
}

pub fn user_patch() -> Value {
    json!({"name": "Ada Lovelace", "roles": ["admin", "billing"]})
}

pub fn user_patched() -> Value {
    json!({"id": USER, "org": ORG, "email": "ada@acme.test", "name": "Ada Lovelace",
           "roles": ["admin", "billing"], "created_at": AT, "updated_at": "2026-01-16T10:00:00Z", "version": 2})
}

pub fn tier_body() -> Value {
    json!({"limits": {"tokens_per_minute": 100_000, "requests_per_minute": 600}})
}

pub fn tier() -> Value {
    json!({
        "name": "gold",
        "limits": {"tokens_per_minute": 100_000, "requests_per_minute": 600},
        "created_at": AT,
        "updated_at": AT,
        "version": 1
    })
}

pub fn new_key() -> Value {
    json!({"name": "ci", "tier": "gold", "models": ["gpt-4o-mini"], "expires_at": "2027-01-01T00:00:00Z"})
}

/// A key's metadata; `revoked_at`/`grace_until` set when it was rotated away.
pub fn key(id: &str, prefix: &str, rotated: bool) -> Value {
    let grace = if rotated {
        json!("2026-01-16T09:30:00Z")
    } else {
        Value::Null
    };
    json!({
        "id": id,
        "org": ORG,
        "name": "ci",
        "prefix": prefix,
        "tier": "gold",
        "models": ["gpt-4o-mini"],
        "expires_at": "2027-01-01T00:00:00Z",
        "revoked_at": grace,
        "last_used_at": null,
        "created_at": AT,
        "rotated_from": null,
        "grace_until": grace,
        "admin_roles": [],
        "state": "active"
    })
}

pub fn key_patch() -> Value {
    json!({"expires_at": "2027-06-30T00:00:00Z", "name": "ci-2027"})
}

pub fn key_patched() -> Value {
    let mut key = key(KEY, "Ab3dE5gH", false);
    key["expires_at"] = json!("2027-06-30T00:00:00Z");
    key["name"] = json!("ci-2027");
    key
}

pub fn issued_key() -> Value {
    let mut issued = key(KEY, "Ab3dE5gH", false);
    issued["key"] = json!("lt-Ab3dE5gH_q8W2mZr4Tt6yUu8iIo0pP1aA3sS5dD7fF9gG2hH4jJ6k");
    issued
}

pub fn rotation() -> Value {
    let mut rotation = key(NEW_KEY, "Zx9cV8bN", false);
    rotation["rotated_from"] = json!(KEY);
    rotation["key"] = json!("lt-Zx9cV8bN_w1E2r3T4y5U6i7O8p9A0s1D2f3G4h5J6k7L8z9X0c1V");
    rotation["previous"] = key(KEY, "Ab3dE5gH", true);
    rotation
}

pub fn event() -> Value {
    json!({
        "id": 42,
        "at": AT,
        "actor": "bootstrap-admin",
        "action": "org.create",
        "object_kind": "org",
        "object_id": ORG,
        "detail": {"name": "acme"}
    })
}

pub fn registration() -> Value {
    json!({"role": "proxy", "address": "10.0.0.7:8080", "version": "0.4.0", "config_version": 7, "started_at": AT})
}

pub fn instance() -> Value {
    json!({
        "id": "proxy-eu-1",
        "app": "LEAKY-PROXY",
        "role": "proxy",
        "address": "10.0.0.7:8080",
        "version": "0.4.0",
        "config_version": 7,
        "started_at": AT,
        "registered_at": AT,
        "last_heartbeat_at": AT,
        "status": "up"
    })
}
